"""The synthetic faces world: determinism, structure of identities and photos, written formats."""
import time

import numpy as np
import pandas as pd

from visualsearch.data.errors import SkipLog
from visualsearch.data.face_readers import read_fairface, read_identity_folders
from visualsearch.data.faces import (AGE_BINS, EMOTIONS, FacesWorldConfig, age_bin, build_faces, emotion_grid,
                                     make_world, photos_of, render_face, sample_photo, world_params)
from visualsearch.data.worlds import ensure_world

TINY = FacesWorldConfig(seed=3, image_size=32, n_pretrain_identities=3, n_train_identities=2, n_val_identities=2,
                        photos_per_identity=5)


def test_age_bins_follow_fairface():
    assert [age_bin(a) for a in (0, 2.9, 3, 9.9, 10, 29.5, 30, 69.9, 70, 90)] == [0, 0, 1, 1, 2, 3, 4, 7, 8, 8]
    assert len(AGE_BINS) == 9 and AGE_BINS[-1] == "more than 70"


def test_render_is_deterministic_and_sized():
    w1, w2 = make_world(TINY), make_world(TINY)
    a = render_face(w1.val[0], photos_of(w1.val[0], TINY, 5)[0], 40)
    b = render_face(w2.val[0], photos_of(w2.val[0], TINY, 5)[0], 40)
    assert a.size == (40, 40) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_emotion_changes_less_than_identity():
    """On clean frontal photos, changing the emotion moves fewer pixels than changing the identity: emotion
    lives in the mouth, brows and eyes, identity in the whole face."""
    cfg = FacesWorldConfig(seed=1)
    w = make_world(cfg)
    rng = np.random.default_rng(0)
    emo_d, id_d = [], []
    for i in range(10):
        a, b = w.pretrain[2 * i], w.pretrain[2 * i + 1]
        pa = sample_photo(rng, a, cfg, emotion="neutral", frontal=True)
        pa.age = a.base_age
        ims = {}
        for emo in ("neutral", "happy"):
            p = sample_photo(rng, a, cfg, emotion=emo, frontal=True)
            p.age, p.intensity = a.base_age, 1.0 if emo != "neutral" else 0.0
            ims[emo] = np.asarray(render_face(a, p, 48), float)
        pb = sample_photo(rng, b, cfg, emotion="neutral", frontal=True)
        pb.age = b.base_age
        other = np.asarray(render_face(b, pb, 48), float)
        emo_d.append(np.abs(ims["neutral"] - ims["happy"]).mean())
        id_d.append(np.abs(ims["neutral"] - other).mean())
        assert emo_d[-1] > 0.3  # the expression is visible
    assert np.mean(emo_d) < 0.5 * np.mean(id_d)


def test_photos_vary_age_and_emotion_around_fixed_identity():
    cfg = FacesWorldConfig(seed=2, photos_per_identity=40)
    w = make_world(cfg)
    ident = next(i for i in w.pretrain if i.base_age > 35)
    photos = photos_of(ident, cfg, 0)
    ages = np.array([p.age for p in photos])
    assert abs(ages.mean() - ident.base_age) < 3 and 3 < ages.std() < 9
    assert set(p.emotion for p in photos) == set(EMOTIONS)


def test_identity_traits_are_spread():
    w = make_world(FacesWorldConfig(seed=0, n_pretrain_identities=400))
    genders = pd.Series([i.gender for i in w.pretrain]).value_counts(normalize=True)
    races = pd.Series([i.race for i in w.pretrain]).value_counts(normalize=True)
    bins = pd.Series([age_bin(i.base_age) for i in w.pretrain]).value_counts(normalize=True)
    assert genders.min() > 0.4 and len(races) == 7 and races.min() > 0.08 and len(bins) == 9 and bins.min() > 0.05


def test_build_writes_real_formats_readable_by_the_readers(tmp_path):
    folder = ensure_world("faces", world_params(TINY), build_faces, root=tmp_path)
    ids = read_identity_folders(folder / "identities", skips=SkipLog())
    assert ids["identity"].nunique() == 3 and len(ids) == 15
    train = read_fairface(folder / "fairface" / "fairface_label_train.csv", skips=SkipLog())
    val = read_fairface(folder / "fairface" / "fairface_label_val.csv", skips=SkipLog())
    assert len(train) == 10 and len(val) == 10
    assert set(train["identity"]).isdisjoint(val["identity"]) and set(train["identity"]).isdisjoint(ids["identity"])
    for df in (train, val):  # gender and race fixed per identity; age bin agrees with age in years
        assert (df.groupby("identity")[["gender", "race"]].nunique() == 1).all().all()
        assert all(age_bin(y) == b for y, b in zip(df["age_years"], df["age_bin"]))
        assert set(df["emotion"]) <= set(EMOTIONS)
    # the same params give the same files (the world cache relies on it)
    other = tmp_path / "again"
    other.mkdir()
    build_faces(other, world_params(TINY))
    a = (folder / "fairface" / "fairface_label_val.csv").read_text()
    assert a == (other / "fairface" / "fairface_label_val.csv").read_text()
    assert (folder / "fairface" / "val" / "3.jpg").read_bytes() == (other / "fairface" / "val" / "3.jpg").read_bytes()


def test_emotion_grid_shape():
    rows, idents = emotion_grid(TINY, n_identities=2, size=24)
    assert len(rows) == 2 and all(len(r) == len(EMOTIONS) for r in rows) and rows[0][0].size == (24, 24)


def test_rendering_is_fast():
    cfg = FacesWorldConfig(seed=0)
    w = make_world(cfg)
    photos = [(i, p) for k, i in enumerate(w.pretrain[:25]) for p in photos_of(i, cfg, k)]
    t = time.perf_counter()
    for ident, p in photos:
        render_face(ident, p, 64)
    per_face = (time.perf_counter() - t) / len(photos)
    assert per_face < 0.01  # thousands of faces in well under a minute
