"""The geodesic click encoding (``prompt.clicks.geodesic_map``): on a flat image it is the Euclidean decay,
an image edge stops it, and the session and the training both feed the encoding the model's spec names."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine
from test_prompt_engine import GEOMETRIES, SHAPE, ClickNet, prompt_spec, sphere_scan
from test_training_prompt import config, sources  # noqa: F401  (the module fixture)

from napari_vit3d.models.registry import LoadedModel
from napari_vit3d.prompt import PromptSession
from napari_vit3d.prompt.clicks import encode_points, geodesic_map
from napari_vit3d.training import prompt_data as P
from napari_vit3d.training.common import TrainingError
from napari_vit3d.training.train_prompt import train_prompt

GEO = {"kind": "geodesic", "tau": 10.0, "edge": 1000.0}


def test_on_a_flat_image_the_map_is_the_euclidean_decay():
    img = np.full((48, 48, 48), 0.4, np.float32)
    p = np.array([24.0, 20.0, 28.0])
    m = geodesic_map(img, [p], tau=10.0)
    g = np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"), -1)
    euclid = np.linalg.norm(g - p, axis=-1)
    sel = (euclid >= 4) & (euclid <= 20)
    d_est = -10.0 * np.log(np.maximum(m[sel], 1e-12))
    # half-resolution Dijkstra with 26 neighbours: a few per cent longer than the straight line, plus the
    # start voxel's rounding onto the coarse grid (at most ~2 voxels)
    assert np.all(np.abs(d_est - euclid[sel]) <= 0.1 * euclid[sel] + 2.5)
    assert m.max() <= 1.0 and m.min() >= 0.0


def test_an_image_edge_stops_the_map():
    rng = np.random.default_rng(0)
    img = (0.3 + rng.normal(0, 0.03, (64, 64, 64))).astype(np.float32)
    img[40:] += 0.4                                         # a bright region beyond the plane i = 40
    m = geodesic_map(img, [(30.0, 32.0, 32.0)])
    near_side, far_side = m[15:20].mean(), m[40:45].mean()   # 10-15 voxels from the click on either side
    assert far_side < 0.1 * near_side


def test_the_session_feeds_the_encoding_its_spec_names():
    spec = prompt_spec()
    spec.extra["click_encoding"] = dict(GEO)
    aff = GEOMETRIES["lps"]
    centre = apply_affine(aff, np.array(SHAPE) / 2)
    vol, _ = sphere_scan(aff, centre, 8)
    s = PromptSession(LoadedModel(ClickNet().eval(), spec, None, "cpu"), vol)
    s.add_point(world=centre)
    s.predict()
    x = s.last.input[0].numpy()
    ball = encode_points(x[1].shape, [s.last.crop.to_voxel(centre)], s.radius)
    geo = geodesic_map(x[0], [s.last.crop.to_voxel(centre)], tau=10.0, edge=1000.0)
    np.testing.assert_allclose(x[1], np.maximum(ball, geo), atol=1e-6)
    assert ((x[1] > 0.05) & (x[1] < 0.95)).sum() > 100      # not the ball alone
    assert not x[2].any()                                    # no negative click: the channel stays empty


def test_training_draws_the_models_encoding(sources, tmp_path):  # noqa: F811
    cfg = config(steps=1)
    cfg["sample"] = dict(cfg["sample"], click_encoding=GEO)
    with pytest.raises(TrainingError, match="model.extra.click_encoding"):
        train_prompt(cfg, tmp_path / "bad", sources=sources, progress=False)
    x, _ = P.sample(np.random.default_rng(1), sources, P.PromptSampleConfig(size=32, p_kind=(1, 0, 0), p_previous=0,
                                                                             click_encoding=GEO))
    assert ((x[1] > 0.05) & (x[1] < 0.95)).any() and x[1].max() == 1.0
    cfg = config(steps=2)
    cfg["model"]["extra"]["click_encoding"] = GEO
    summary = train_prompt(cfg, tmp_path / "geo", sources=sources, progress=False)
    assert summary["step"] == 2
