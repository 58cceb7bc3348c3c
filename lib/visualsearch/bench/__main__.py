"""python -m visualsearch.bench NAME [options]: run one benchmark and print its figures."""
import importlib
import sys

NAMES = ("retrieval", "triplet", "face", "maaf")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NAMES:
        print(f"usage: python -m visualsearch.bench {{{','.join(NAMES)}}} [options]", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"visualsearch.bench.{argv[0]}")
    except ModuleNotFoundError as e:
        print(f"benchmark '{argv[0]}' is not available yet ({e})", file=sys.stderr)
        return 2
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
