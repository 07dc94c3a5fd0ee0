"""Label maps from the real sample and label-to-image synthesis, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_vit3d.io.nifti import read_nifti
from napari_vit3d.io.samples import sample_path
from napari_vit3d.training import synthesis as S


@pytest.fixture(scope="module")
def colin():
    t1 = read_nifti(sample_path("colin27_t1.nii.gz"))
    mask = read_nifti(sample_path("colin27_brainmask.nii.gz"))
    return t1.data.astype(np.float32), np.asarray(mask.data) > 0, t1.affine


@pytest.fixture(scope="module")
def colin_map(colin):
    t1, mask, aff = colin
    return S.label_map_from_arrays("colin27", t1, mask, aff, spacing_mm=4)


def test_kmeans_recovers_known_centres():
    rng = np.random.default_rng(0)
    true = np.array([10.0, 50.0, 120.0])
    v = np.concatenate([rng.normal(m, 3.0, 5000) for m in true])
    rng.shuffle(v)
    np.testing.assert_allclose(S.kmeans_1d(v, 3), true, atol=0.5)


def test_otsu_matches_scikit_image(colin):
    t1 = colin[0]
    sub = t1[::3, ::3, ::3]
    width = (sub.max() - sub.min()) / 256
    assert S.otsu_threshold(sub) == pytest.approx(float(threshold_otsu(sub)), abs=1.5 * float(width))


def test_block_mean_and_majority_match_naive_loops():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(5, 4, 6)).astype(np.uint8)
    m = S.block_mean(a, 2)
    maj = S.block_majority(a, 2, 4)
    assert m.shape == maj.shape == (3, 2, 3)
    for i in range(3):
        for j in range(2):
            for k in range(3):
                blk = np.zeros((2, 2, 2))
                src = a[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2]
                blk[:src.shape[0], :src.shape[1], :src.shape[2]] = src  # zero padded at the far edge
                assert m[i, j, k] == pytest.approx(blk.mean())
                counts = np.bincount(src.astype(int).ravel(), minlength=4)  # padding votes for nobody
                assert maj[i, j, k] == int(np.argmax(counts))


def test_downsample_grid_keeps_the_field_of_view():
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-90, -125, -71)
    new, shape = S.downsample_grid(aff, (181, 217, 181), 2)
    assert shape == (91, 109, 91)
    # the first 2 mm voxel is centred between the first two 1 mm voxel centres
    np.testing.assert_allclose(new @ [0, 0, 0, 1], [-89.5, -124.5, -70.5, 1])
    np.testing.assert_allclose(np.diag(new)[:3], [2, 2, 2])


def test_label_map_from_the_real_sample(colin, colin_map):
    t1, mask, _ = colin
    lm = colin_map
    assert lm.labels.shape == tuple(int(np.ceil(s / 4)) for s in t1.shape)
    assert set(np.unique(lm.labels)) <= set(range(S.N_SUBLABELS))
    brain_ds = S.block_mean(mask, 4) > 0.5
    cls = lm.classes
    # the brain of the map is intracranial (tight brain + CSF): it holds the tight mask
    assert np.sum((cls > 0) & brain_ds) >= 0.99 * np.sum(brain_ds)
    assert 1.03 < np.sum(cls > 0) / np.sum(brain_ds) < 1.25
    # tissue classes are intensity-ordered (T1: CSF < GM < WM) on the real image
    means = [t1[::4, ::4, ::4][:lm.labels.shape[0], :lm.labels.shape[1], :lm.labels.shape[2]][cls == c].mean()
             for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # scalp/skull sub-labels only outside the brain, air outside the head
    assert not np.any((lm.labels >= 4) & brain_ds & ndimage.binary_erosion(brain_ds))
    assert lm.labels[0, 0, 0] == 0


@pytest.mark.parametrize("real", [True, False])
def test_synthesized_image_matches_its_labels(colin_map, real):
    cfg = S.SynthConfig(out_shape=(48, 56, 48), p_real=1.0 if real else 0.0, p_t1_like=1.0, p_thick=0.0,
                        noise_max=0.0, bias_max=0.0)
    for seed in range(3):
        img, cls = S.synthesize(colin_map, np.random.default_rng(seed), cfg)
        assert img.shape == cls.shape == (48, 56, 48)
        assert img.dtype == np.float32 and cls.dtype == np.uint8
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert set(np.unique(cls)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(cls))
        # image and labels share one spatial transform: tissue intensities keep the T1 order
        inner = [ndimage.binary_erosion(cls == c) for c in (1, 2, 3)]
        means = [img[m].mean() for m in inner if m.any()]
        assert len(means) >= 2 and all(a < b for a, b in zip(means, means[1:])), means
        assert means[-1] - means[0] > 0.15


def test_synthesis_differs_between_seeds_and_repeats_with_the_same_seed(colin_map):
    cfg = S.SynthConfig(out_shape=(40, 48, 40))
    a = S.synthesize(colin_map, np.random.default_rng(7), cfg)
    b = S.synthesize(colin_map, np.random.default_rng(7), cfg)
    c = S.synthesize(colin_map, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert np.abs(a[0] - c[0]).mean() > 0.01


def test_bank_roundtrip(colin_map, tmp_path):
    cfg = S.SynthConfig(out_shape=(24, 24, 24))
    path = S.build_bank(None, tmp_path / "b.npz", n=3, seed=2, cfg=cfg, maps=[colin_map])
    images, labels, meta = S.load_bank(path)
    assert images.shape == labels.shape == (3, 24, 24, 24)
    assert images.dtype == labels.dtype == np.uint8
    assert meta["n"] == 3 and meta["seed"] == 2 and meta["sources"] == ["colin27"] * 3
    img0, cls0 = S.synthesize(colin_map, np.random.default_rng(2), cfg)
    np.testing.assert_array_equal(labels[0], cls0)
    np.testing.assert_array_equal(images[0], np.round(img0 * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def colin_1mm(colin):
    t1, mask, _ = colin
    labels, brain = S.head_label_map_1mm(t1, mask)
    return t1, S.clean_mask(mask), labels, brain


def test_intracranial_brain_adds_only_csf_inside_the_skull(colin_1mm):
    """The field's brain definition (brain + sulcal and surrounding CSF inside the inner skull), checked
    against references computed here independently (scipy distances, scikit-image Otsu thresholds)."""
    from skimage.filters import threshold_multiotsu

    t1, tight, labels, brain = colin_1mm
    added = brain & ~tight
    assert np.all(brain[tight])                               # never loses brain tissue
    assert np.all(labels[added] == 1)                         # everything added is CSF
    ml = added.sum() / 1000.0
    assert 0.06 * tight.sum() / 1000.0 < ml < 0.2 * tight.sum() / 1000.0, ml  # Colin27: ≈ 220 mL of ≈ 1740
    # close to the tight brain: within closing (5) + growth (4) + smoothing (3) mm
    d_tight = ndimage.distance_transform_edt(~tight)
    assert d_tight[added].max() <= 12.5
    # inside the skull: far from the air around the head (head = half the scikit-image Otsu threshold,
    # largest component, holes filled slice by slice along each axis; the scalp and skull are > 5 mm)
    head = S.largest_component(t1 > 0.5 * threshold_otsu(t1))
    for ax in range(3):
        head = np.stack([ndimage.binary_fill_holes(np.take(head, i, axis=ax)) for i in range(head.shape[ax])], axis=ax)
    d_air = ndimage.distance_transform_edt(head)
    assert np.all(head[added]) and d_air[added].min() >= 5.0
    # CSF-dark: below the CSF/GM threshold of a 3-class Otsu of the brain for nearly all of it, and
    # never the bright scalp fat (above the GM/WM threshold)
    th = threshold_multiotsu(t1[tight], classes=3)
    assert np.mean(t1[added] < th[0] + 0.25 * (th[1] - th[0])) > 0.9
    assert np.mean(t1[added] > th[1]) < 0.01


def _phantom_head(n=64, r_skull=30, r_icv=25, r_tissue=21, r_wm=16):
    """Concentric spheres: skull (sub-label 4), CSF rim, GM shell, WM core; the centre off the grid's centre."""
    c = np.array([33.0, 30.0, 31.0])
    r = np.sqrt(((np.indices((n, n, n)).T - c) ** 2).sum(-1)).T
    sub = np.zeros((n, n, n), np.uint8)
    sub[r <= r_skull] = 4
    sub[r <= r_icv] = 1
    sub[r <= r_tissue] = 2
    sub[r <= r_wm] = 3
    return sub, r


@pytest.mark.parametrize("with_image", [False, True])
def test_atrophy_shrinks_tissue_inside_an_unchanged_skull(with_image):
    sub, r = _phantom_head()
    image = None
    if with_image:   # T1-like intensities: CSF dark with a little spread, GM mid, WM bright
        rng0 = np.random.default_rng(1)
        image = np.choose(sub, [0.0, 0.15, 0.5, 0.8, 0.9, 0.0, 0.0]).astype(np.float32)
        image = image + np.where(sub == 1, rng0.normal(0, 0.02, sub.shape), 0).astype(np.float32)
    factor = 1.10
    out, img = S.shrink_tissue(np.random.default_rng(0), sub, image, factor)
    cls0, cls1 = S.SUB_TO_CLASS[sub], S.SUB_TO_CLASS[out]
    # the brain mask (inside the inner skull surface) and everything outside it are untouched
    np.testing.assert_array_equal(cls1 > 0, cls0 > 0)
    np.testing.assert_array_equal(out[cls0 == 0], sub[cls0 == 0])
    # the tissue shrank by about factor³ in volume (per-axis jitter ±2 %), into the sphere of radius 21 / factor
    tis0 = ((cls0 == 2) | (cls0 == 3)).sum()
    tis1 = ((cls1 == 2) | (cls1 == 3)).sum()
    assert 0.80 / factor ** 3 < tis1 / tis0 < 1.20 / factor ** 3
    assert ((cls1 >= 2) & (r > 21 / (factor * 0.98) + 1)).sum() == 0
    assert ((cls1 == 1) & (r < 21 / (factor * 1.02) - 1) & (r > 16)).sum() == 0   # no CSF inside the cortex
    # every voxel that changed became CSF between the new cortex and the unchanged inner skull surface
    changed = out != sub
    assert changed.any()
    assert np.all((out[changed] == 1) | (out[changed] == 2))          # GM→CSF at the rim, WM→GM deeper
    assert np.all(r[changed & (out == 1)] > 21 / (factor * 1.02) - 1)
    if with_image:
        gap = (cls0 >= 2) & (cls1 == 1)          # tissue that became CSF
        assert gap.any()
        assert abs(float(np.median(img[gap])) - 0.15) < 0.02        # the gap gets the scan's own CSF value
        np.testing.assert_array_equal(img[cls0 == 0], image[cls0 == 0])
    else:
        assert img is None


def test_atrophy_off_keeps_the_random_stream(colin_map):
    """``p_atrophy = 0`` (the default) draws nothing: banks built before it existed are reproduced."""
    a = S.synthesize(colin_map, np.random.default_rng(3), S.SynthConfig())
    b = S.synthesize(colin_map, np.random.default_rng(3), S.SynthConfig(p_atrophy=0.0))
    np.testing.assert_array_equal(a[0], b[0])
    c = S.synthesize(colin_map, np.random.default_rng(3), S.SynthConfig(p_atrophy=1.0))
    assert (c[1] >= 2).sum() < (a[1] >= 2).sum()   # on: less tissue in the same head
