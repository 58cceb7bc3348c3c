"""One bounded sweep on a GPU machine: which products world shows single-category batches beating mixed ones,
plus the paper-shape throughput. Writes JSON lines to $OUT/sweep.jsonl as it goes (partial results survive).

    python scripts/tuning/triplet_gpu_sweep.py [--tiny]
"""
import json
import os
import sys
import time
from dataclasses import asdict
from multiprocessing import Pool

T0 = time.time()
TINY = "--tiny" in sys.argv
OUT = os.environ.get("OUT", "/tmp/sweep_out")
os.makedirs(OUT, exist_ok=True)
ROOT = os.path.join("/tmp", "sweep_worlds")
DEADLINE = float(os.environ.get("DEADLINE", "440"))  # no new run starts after this many seconds

BASE = dict(seed=0, train_products_per_category=400, test_products_per_category=100, lookalike_groups_per_category=40,
            image_size=64)
WORLDS = {  # in order of priority
    "B_easier_street": dict(street_difficulty=0.5, detail_strength=1.5),
    "D_more_products": dict(street_difficulty=0.5, detail_strength=1.5, train_products_per_category=800),
    "A_default": {},
    "C_fewer_groups": dict(street_difficulty=0.5, detail_strength=1.5, lookalike_groups_per_category=15),
}
PAPER_WORLD = dict(seed=5, train_products_per_category=60, test_products_per_category=10, image_size=224)
if TINY:
    BASE.update(train_products_per_category=12, test_products_per_category=4, lookalike_groups_per_category=3)
    PAPER_WORLD.update(train_products_per_category=4, test_products_per_category=2, image_size=96)
    WORLDS = dict(list(WORLDS.items())[:1])


def log(rec):
    rec["t"] = round(time.time() - T0, 1)
    print(json.dumps(rec), flush=True)
    with open(os.path.join(OUT, "sweep.jsonl"), "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def build(item):
    name, cfg = item
    from visualsearch.data.products import ProductsWorldConfig, products_world
    t = time.time()
    folder = products_world(ProductsWorldConfig(**cfg), root=ROOT)
    return name, str(folder), time.time() - t


def main():
    items = [(n, {**BASE, **w}) for n, w in WORLDS.items()] + [("paper_shape", PAPER_WORLD)]
    with Pool(min(len(items), 14)) as pool:
        folders = {}
        for name, folder, dt in pool.imap_unordered(build, items):
            folders[name] = folder
            log({"event": "world", "name": name, "build_s": round(dt, 1)})
    import torch
    torch.set_num_threads(8)
    from visualsearch.evaluate import search
    from visualsearch.papers.triplet import analysis
    from visualsearch.papers.triplet import experiment as T
    from visualsearch.papers.triplet.data import attribute_targets, load_images
    from visualsearch.data.products import read_attributes
    from visualsearch.data.retail import read_inshop, read_sop

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    log({"event": "device", "device": dev, "name": torch.cuda.get_device_name() if dev == "cuda" else "cpu"})
    torch.backends.cudnn.benchmark = True

    # --- CPU numbers on 2 idle threads (the reference machine has 2 cores): loss timing, default-shape training
    from visualsearch.bench.triplet import time_losses, time_training
    torch.set_num_threads(2)
    log({"event": "loss_ms_cpu2", **{k: round(v, 3) for k, v in time_losses("cpu", 100 if TINY else 300).items()}})
    log({"event": "train_cpu2", **time_training("default", "cpu", steps=3 if TINY else 12)})
    torch.set_num_threads(8)
    if dev == "cuda":
        log({"event": "loss_ms_cuda", **{k: round(v, 3) for k, v in time_losses("cuda", 300).items()}})

    # --- paper shape throughput on a synthetic world rendered at 224 px
    b = read_sop(folders["paper_shape"])
    tr = load_images(b.train, PAPER_WORLD["image_size"], use_boxes=False)
    stamps = []

    def stamp(m, s):
        if dev == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    steps = 6 if TINY else 300
    cfg = T.RunConfig(arch="resnet50", num_pairs=64, steps=steps)
    res = T.train_embedding(tr, cfg, device=dev, eval_fn=stamp, eval_every=1)
    dt = stamps[-1] - stamps[4]
    log({"event": "paper_shape", "arch": "resnet50", "px": PAPER_WORLD["image_size"], "batch": 128, "steps": steps,
         "images_per_s": round(128 * (len(stamps) - 5) / dt, 1), "final_loss": float(res.log.loss.tail(20).mean()),
         "frac_active_last20": float(res.log.frac_active.tail(20).mean())})
    del res, tr
    if dev == "cuda":
        torch.cuda.empty_cache()

    # --- the world sweep, SOP protocol (whole images, every test image queries the others)
    long_steps = 8 if TINY else 1200
    evals = (4, 8) if TINY else (150, 300, 600, 1200)
    for name in WORLDS:
        if time.time() - T0 > DEADLINE:
            log({"event": "skipped", "name": name, "why": "deadline"})
            continue
        folder = folders[name]
        att = read_attributes(folder)
        grp = att.set_index("product_id").group
        b = read_sop(folder)
        size = 64 if not TINY else 64
        tr = load_images(b.train, size, use_boxes=False)
        q = load_images(b.query, size, use_boxes=False)
        tr.store.pixels, q.store.pixels = tr.store.pixels.to(dev), q.store.pixels.to(dev)
        pid = lambda s: int(s.rsplit("_", 1)[1])
        qg = torch.tensor([grp[pid(s)] for s in q.item_ids])
        t = time.time()
        targets = attribute_targets(tr.item_ids, att)
        pre = T.pretrain_trunk(tr, targets, steps=8 if TINY else 500, batch_size=128, lr=1e-3, device=dev)
        acc = pre["log"].tail(50)[[c for c in pre["log"] if c.startswith("acc_")]].mean().round(3).to_dict()
        log({"event": "pretrain", "world": name, "s": round(time.time() - t, 1), **acc})

        def evaluate(model, feats=False):
            e = T.embed_images(model, q, features=feats, device=dev)
            r = search(e, e, q.labels, q.labels, (1, 10), exclude="self")
            eb = analysis.error_breakdown(r, q.labels, q.labels, qg, qg, q.categories, q.categories)
            return {"R@1": round(r.recall[1], 4), "R@10": round(r.recall[10], 4), **{k: round(v, 3) for k, v in eb.items()}}

        m0 = T.build_model(T.RunConfig(), pre["trunk"]).to(dev)
        log({"event": "off_the_shelf", "world": name, **evaluate(m0, True)})
        runs = [dict(single_category_prob=0.0), dict(single_category_prob=0.8)]
        if name == "B_easier_street":
            runs += [dict(single_category_prob=0.0, lr=0.003), dict(single_category_prob=0.8, lr=0.003)]
        for run in runs:
            if time.time() - T0 > DEADLINE:
                log({"event": "skipped", "world": name, "run": run})
                continue
            cfg = T.RunConfig(**{**dict(steps=long_steps, num_pairs=32, lr=0.01), **run})
            t = time.time()
            curve = []

            def ev(m, s):
                r = evaluate(m)
                curve.append((s, r["R@1"]))
                return {"R@1": r["R@1"]} if s not in evals else r

            res = T.train_embedding(tr, cfg, pre["trunk"], device=dev, eval_fn=ev, eval_every=evals[0])
            lg = res.log
            log({"event": "run", "world": name, **run, "steps": cfg.steps, "s": round(time.time() - t, 1),
                 "curve": curve, "final": evaluate(res.model),
                 "frac_active": [round(float(lg.frac_active.iloc[i:i + 50].mean()), 3) for i in range(0, len(lg), max(1, len(lg) // 6))],
                 "sim_ap": round(float(lg.sim_ap.tail(50).mean()), 3), "sim_an": round(float(lg.sim_an.tail(50).mean()), 3)})
    log({"event": "done"})


if __name__ == "__main__":
    main()
