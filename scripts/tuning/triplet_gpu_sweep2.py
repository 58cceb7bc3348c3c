"""Second bounded sweep (GPU): the default preset's world and budget. Does p=0.8 beat p=0 within the default
preset's training budget under any reasonable setting, and does batch-hard beat random triplets there?
Settings are judged by the mixed-batch (p=0) Recall@1, not by the p gap. Two seeds each.
Writes JSON lines to $OUT/sweep2.jsonl.

    python scripts/tuning/triplet_gpu_sweep2.py [--tiny]
"""
import json
import os
import sys
import time

T0 = time.time()
TINY = "--tiny" in sys.argv
OUT = os.environ.get("OUT", "/tmp/sweep2_out")
os.makedirs(OUT, exist_ok=True)
DEADLINE = float(os.environ.get("DEADLINE", "330"))
WORLD = dict(seed=0, categories=["dress", "shirt", "toptee", "trousers", "skirt", "jacket"],
             train_products_per_category=400, test_products_per_category=100, lookalike_groups_per_category=40,
             shop_photos=2, street_photos=2, image_size=64, detail_strength=1.5, street_difficulty=0.5,
             occluder_prob=0.4, shade_jitter=0.06)  # = configs/triplet_product_search/default.yaml
if TINY:
    WORLD.update(train_products_per_category=12, test_products_per_category=4, lookalike_groups_per_category=3)


def log(rec):
    rec["t"] = round(time.time() - T0, 1)
    print(json.dumps(rec), flush=True)
    with open(os.path.join(OUT, "sweep2.jsonl"), "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def main():
    import torch
    from visualsearch.evaluate import search
    from visualsearch.papers.triplet import analysis
    from visualsearch.papers.triplet import experiment as T
    from visualsearch.papers.triplet.data import attribute_targets, load_images
    from visualsearch.data.products import ProductsWorldConfig, products_world, read_attributes
    from visualsearch.data.retail import read_inshop, read_sop

    torch.set_num_threads(8)
    torch.backends.cudnn.benchmark = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    folder = products_world(ProductsWorldConfig(**WORLD), root="/tmp/sweep2_worlds")
    log({"event": "world", "folder": str(folder)})
    size = 48
    sop, ins = read_sop(folder), read_inshop(folder)
    sets = {}
    for name, split, boxes in (("sop_train", sop.train, False), ("sop_test", sop.query, False),
                               ("in_train", ins.train, True), ("in_query", ins.query, True),
                               ("in_gallery", ins.gallery, True)):
        s = load_images(split, size, use_boxes=boxes)
        s.store.pixels = s.store.pixels.to(dev)
        sets[name] = s
    att = read_attributes(folder)
    grp = att.set_index("product_id").group
    tg = torch.tensor([grp[int(s.rsplit("_", 1)[1])] for s in sets["sop_test"].item_ids])
    targets = attribute_targets(sets["sop_train"].item_ids, att)
    test = sets["sop_test"]

    def ev_sop(model, feats=False):
        e = T.embed_images(model, test, features=feats, device=dev)
        r = search(e, e, test.labels, test.labels, (1, 10), exclude="self")
        eb = analysis.error_breakdown(r, test.labels, test.labels, tg, tg, test.categories, test.categories)
        return {"R@1": round(r.recall[1], 4), "R@10": round(r.recall[10], 4),
                "lookalike": round(eb["lookalike"], 3), "other_category": round(eb["other_category"], 3)}

    def ev_in(model, feats=False):
        q = T.embed_images(model, sets["in_query"], features=feats, device=dev)
        g = T.embed_images(model, sets["in_gallery"], features=feats, device=dev)
        r = search(q, g, sets["in_query"].labels, sets["in_gallery"].labels, (1, 10, 20))
        return {f"R@{k}": round(v, 4) for k, v in r.recall.items()}

    pres = {"pre_default": (250, 64), "pre_strong": (500, 128)}
    for pname, (steps, bs) in pres.items():
        t = time.time()
        pre = T.pretrain_trunk(sets["sop_train"], targets, steps=4 if TINY else steps, batch_size=bs, lr=1e-3,
                               device=dev)
        acc = pre["log"].tail(30).filter(like="acc_").mean().round(3).to_dict()
        m0 = T.build_model(T.RunConfig(), pre["trunk"]).to(dev)
        log({"event": "pretrain", "pre": pname, "s": round(time.time() - t, 1), **acc,
             "off_sop": ev_sop(m0, True), "off_inshop": ev_in(m0, True)})
        pres[pname] = pre["trunk"]

    def run(pre, which, **kw):
        if time.time() - T0 > DEADLINE:
            log({"event": "skipped", **kw})
            return
        cfg = T.RunConfig(**{**dict(steps=150, num_pairs=32, lr=0.01), **kw})
        if TINY:
            cfg.steps = 4
        t = time.time()
        every = max(cfg.steps // 4, 1)
        ev = (lambda m, s: {"R@1": ev_sop(m)["R@1"]}) if which == "sop" else None
        res = T.train_embedding(sets["sop_train" if which == "sop" else "in_train"], cfg, pres[pre], device=dev,
                                eval_fn=ev, eval_every=every if ev else 0)
        lg = res.log
        curve = lg.dropna(subset=["R@1"])[["step", "R@1"]].values.tolist() if "R@1" in lg else []
        final = ev_sop(res.model) if which == "sop" else ev_in(res.model)
        log({"event": "run", "pre": pre, "which": which, **kw, "steps": cfg.steps, "s": round(time.time() - t, 1),
             "final": final, "curve": curve, "frac_active_last30": round(float(lg.frac_active.tail(30).mean()), 3),
             "sim_an_last30": round(float(lg.sim_an.tail(30).mean()), 3)})

    # 1. the default budget, claim 1 (In-shop protocol): methods, two seeds
    for seed in (0, 1):
        for m in ("random", "batch_hard", "semi_hard", "batch_all"):
            run("pre_default", "inshop", method=m, seed=seed)
    # 2. the default budget, claim 2 (SOP protocol): training settings x p, two seeds
    for setting in (dict(), dict(steps=300, num_pairs=16), dict(lr=0.03)):
        for seed in (0, 1):
            for p in (0.0, 0.8):
                run("pre_default", "sop", single_category_prob=p, seed=seed, **setting)
    for seed in (0, 1):
        for p in (0.0, 0.8):
            run("pre_strong", "sop", single_category_prob=p, seed=seed)
    # 3. what longer training does at the default world and input size
    for seed in (0, 1):
        for p in (0.0, 0.5, 0.8, 1.0):
            run("pre_default", "sop", single_category_prob=p, seed=seed, steps=1200)
    log({"event": "done"})


if __name__ == "__main__":
    main()
