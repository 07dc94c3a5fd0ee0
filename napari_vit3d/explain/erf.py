"""Effective receptive field (Luo et al. 2016): how much each input voxel moves a chosen output.

The gradient of one scalar output -- a class logit at one voxel, or a class's logits summed over a
region -- with respect to the (normalised, model-space) input window, by one backward pass. Shown
as its absolute value, summed over input channels (``log(1 + x)`` on request, for display). A
model-level ERF averages the maps of ``n`` query voxels drawn at random, each at the centre of its
own window, so the maps align by offset from the query.

Statistics (:func:`erf_statistics`): per array axis, the centred extent in mm holding 50/90/99 % of
the marginal mass, and the smallest centred box (a cube in mm) holding 50/90/99 % of the total mass.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import Cancelled, GeometryError, ModelError
from ..io.resample import resample_array
from ..io.volume import Volume
from .memory import check_memory
from .session import ExplainSession, query_world

ERF_UNITS = "|d logit / d input| (normalised input intensity, per model voxel)"
FRACTIONS = (0.5, 0.9, 0.99)


def input_gradient(network: torch.nn.Module, x: torch.Tensor, target_class: int, *, voxel=None,
                   region: torch.Tensor | None = None) -> torch.Tensor:
    """d(output[target_class] at ``voxel`` or summed over ``region``)/d x, shape of ``x`` minus batch.

    ``x`` (1, C, D, H, W); ``voxel`` (i, j, k) window indices; ``region`` a (D, H, W) 0/1 weight.
    The network runs in eval mode; its parameters receive no gradient.
    """
    if (voxel is None) == (region is None):
        raise ModelError("ERF needs either one output voxel or an output region")
    was_training = network.training
    network.eval()
    req = [p.requires_grad for p in network.parameters()]
    for p in network.parameters():
        p.requires_grad_(False)
    try:
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = network(xg)
            if isinstance(out, (tuple, list)):
                out = out[0]
            n_out = int(out.shape[1])
            if not 0 <= int(target_class) < n_out:
                raise ModelError(f"class {target_class} does not exist: the model has {n_out} output channels "
                                 f"(0..{n_out - 1})")
            if voxel is not None:
                i, j, k = (int(v) for v in voxel)
                scalar = out[0, int(target_class), i, j, k]
            else:
                scalar = (out[0, int(target_class)] * region.to(out.dtype)).sum()
            (g,) = torch.autograd.grad(scalar, xg)
    finally:
        for p, r in zip(network.parameters(), req):
            p.requires_grad_(r)
        network.train(was_training)
    return g[0].detach()


def _default_class(spec) -> int:
    return 1 if spec.n_classes >= 2 else 0


def _display(g: torch.Tensor, absolute: bool, log1p: bool) -> np.ndarray:
    m = g.abs() if absolute else g
    m = m.sum(0)  # over input channels
    if log1p:
        if not absolute:
            raise ModelError("log(1 + x) display needs the absolute gradient")
        m = torch.log1p(m)
    return m.float().numpy()


def erf_map(model, volume: Volume, *, voxel=None, world=None, region: Volume | None = None,
            target_class: int | None = None, absolute: bool = True, log1p: bool = False,
            session: ExplainSession | None = None, progress=None, cancel=None) -> Volume:
    """ERF of one output voxel (or a region) for ``target_class``, on the scan grid (zero outside the window)."""
    sess = session if session is not None else ExplainSession(model, volume)
    cls = _default_class(sess.spec) if target_class is None else int(target_class)
    if region is not None:
        if voxel is not None or world is not None:
            raise ModelError("give either a query point or a region for the ERF, not both")
        rm = np.asarray(region.data) > 0
        if (rm.ndim != 3 or region.spatial_shape != volume.spatial_shape
                or not np.allclose(region.affine, volume.affine, atol=1e-4)):
            raise GeometryError("the ERF region must be a 3D mask on the scan's grid")
        if not rm.any():
            raise GeometryError("the ERF region is empty")
        c = np.argwhere(rm).mean(0)
        w = volume.affine[:3, :3] @ c + volume.affine[:3, 3]
    else:
        w = query_world(volume, voxel=voxel, world=world)
    start = sess.centred_window(w)
    x = sess.start_window(start, "erf", cancel=cancel, progress=progress)
    qv = None
    rt = None
    if region is not None:
        wr = resample_array(rm.astype(np.uint8), volume.affine, sess.window_affine(start), sess.roi, order=0)
        if not wr.any():
            raise GeometryError("the ERF region does not reach the model window")
        rt = torch.from_numpy(wr.astype(np.float32)).to(sess.device)
    else:
        q = np.floor(sess.model_voxel(w) - np.asarray(start) + 0.5).astype(int)
        qv = tuple(int(v) for v in np.clip(q, 0, np.asarray(sess.roi) - 1))
    g = input_gradient(sess.network, x, cls, voxel=qv, region=rt).cpu()
    if progress is not None:
        progress(1, 1)
    m = _display(g, absolute, log1p)
    scan = sess.to_scan(sess.place_window(m[None], start))
    labels = list(sess.spec.labels or ())
    meta = {"method": "erf", "layer": "input", "head": None, "target_class": cls,
            # the class is an output channel: channel c is the spec's c-th label (as in inference)
            "class_name": labels[cls].name if 0 <= cls < len(labels) else str(cls),
            "label_value": int(labels[cls].index) if 0 <= cls < len(labels) else cls,
            "units": (("log(1 + " + ERF_UNITS + ")") if log1p
                      else (ERF_UNITS if absolute else ERF_UNITS.replace("|", ""))),
            "query": {"world_mm": np.round(w, 4).tolist(), "window_voxel": None if qv is None else list(qv),
                      "region_voxels": None if rt is None else int(rt.sum())},
            "window": sess.window_info(start),
            "parameters": {"target_class": cls, "absolute": bool(absolute), "log1p": bool(log1p),
                           "output": "region sum" if region is not None else "one voxel",
                           "channels": "|gradient| summed over input channels"}}
    return sess.make_volume(scan, name=f"ERF class {cls}", metadata=meta)


def model_erf(model, volume: Volume, *, n_samples: int = 8, target_class: int | None = None, seed: int = 0,
              mask: Volume | None = None, session: ExplainSession | None = None, progress=None,
              cancel=None) -> Volume:
    """Model-level ERF: |gradient| averaged over ``n_samples`` random query voxels, aligned on the query.

    Query voxels are drawn (seeded) among model-grid voxels inside the scan (and inside ``mask`` when
    given, a mask on the scan grid) whose centred window fits the padded grid, so every query sits
    at the window centre. The result is a kernel on a window-sized grid with the model's spacing and
    axes, its world origin (0, 0, 0) mm at the query: coordinates are offsets in mm.
    """
    sess = session if session is not None else ExplainSession(model, volume)
    cls = _default_class(sess.spec) if target_class is None else int(target_class)
    if int(n_samples) < 1:
        raise ModelError("the model-level ERF needs at least one sample")
    roi, shape = np.asarray(sess.roi), np.asarray(sess.grid_shape)
    centre = roi // 2
    lo = np.maximum(centre, [s.start for s in sess.model_input.valid])
    hi = np.minimum(shape - roi + centre, [s.stop - 1 for s in sess.model_input.valid])
    if np.any(hi < lo):
        lo = hi = np.minimum(np.maximum(centre, lo), shape - roi + centre)
    rng = np.random.default_rng(seed)
    mask_m = None
    if mask is not None:
        mask_m = resample_array((np.asarray(mask.data) > 0).astype(np.uint8), mask.affine, sess.model_input.affine,
                                sess.grid_shape, order=0)
    check_memory(sess.network, sess.roi, "erf", int(sess.model_input.tensor.shape[1]))
    acc = np.zeros(tuple(roi), dtype=np.float64)
    queries = []
    tries = 0
    while len(queries) < int(n_samples):
        tries += 1
        if tries > 1000 * int(n_samples):
            raise GeometryError("no query voxels could be drawn inside the mask")
        q = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
        if mask_m is not None and not mask_m[tuple(q)]:
            continue
        queries.append(q)
    for i, q in enumerate(queries):
        if cancel is not None and cancel():
            raise Cancelled("explanation was cancelled")
        start = q - centre
        x = sess.window_tensor(tuple(int(s) for s in start)).to(sess.device)
        g = input_gradient(sess.network, x, cls, voxel=tuple(int(c) for c in centre)).cpu()
        acc += g.abs().sum(0).double().numpy()
        if progress is not None:
            progress(i + 1, len(queries))
    acc /= len(queries)
    a = sess.model_input.affine.copy()
    a[:3, 3] = -(a[:3, :3] @ centre.astype(float))
    meta = {"method": "model-erf", "target_class": cls, "n_samples": len(queries), "seed": int(seed),
            "units": "mean " + ERF_UNITS, "query_model_voxels": [q.tolist() for q in queries],
            "coordinates": "offset from the query in mm (model axes)",
            "parameters": {"target_class": cls, "n_samples": len(queries), "seed": int(seed)}}
    return Volume(data=acc.astype(np.float32), affine=a, name=f"{volume.name} · model ERF class {cls}",
                  metadata={"kind": "map", "model": sess.model_name, **meta})


def erf_statistics(erf: Volume, centre_world=None, fractions=FRACTIONS) -> dict:
    """Extent of an ERF map around ``centre_world`` (default: the map's query / world origin).

    * ``axis_extent_mm[f]``: per array axis, the width (mm) of the smallest interval centred on the
      query holding fraction ``f`` of that axis's marginal mass;
    * ``box_side_mm[f]``: side of the smallest cube (in mm, along the array axes) centred on the query
      holding ``f`` of the total mass;
    * ``sigma_mm``: per axis, root mean squared offset from the query.
    """
    m = np.abs(np.asarray(erf.data, np.float64))
    if m.ndim != 3:
        raise ModelError("ERF statistics need a 3D map")
    tot = m.sum()
    if tot <= 0:
        raise ModelError("the ERF map is all zero")
    if centre_world is None:
        q = erf.metadata.get("query", {}).get("world_mm") if isinstance(erf.metadata.get("query"), dict) else None
        centre_world = q if q is not None else [0.0, 0.0, 0.0]
    c = np.linalg.solve(erf.affine[:3, :3], np.asarray(centre_world, float) - erf.affine[:3, 3])
    sp = np.sqrt((erf.affine[:3, :3] ** 2).sum(0))
    offs = [(np.arange(n) - c[a]) * sp[a] for a, n in enumerate(m.shape)]
    out = {"centre_voxel": np.round(c, 3).tolist(), "total": float(tot), "axis_extent_mm": {}, "box_side_mm": {},
           "sigma_mm": []}
    for a in range(3):
        marg = m.sum(axis=tuple(b for b in range(3) if b != a))
        out["sigma_mm"].append(float(np.sqrt((marg * offs[a] ** 2).sum() / tot)))
    cheb = np.maximum.reduce(np.meshgrid(*[np.abs(o) for o in offs], indexing="ij"))
    order = np.argsort(cheb, axis=None, kind="stable")
    cum = np.cumsum(m.ravel()[order]) / tot
    dist = cheb.ravel()[order]
    for f in fractions:
        ext = []
        for a in range(3):
            marg = m.sum(axis=tuple(b for b in range(3) if b != a))
            o = np.abs(offs[a])
            idx = np.argsort(o, kind="stable")
            cm = np.cumsum(marg[idx]) / tot
            r = o[idx][min(int(np.searchsorted(cm, f - 1e-12)), len(idx) - 1)]
            ext.append(float(2 * r + sp[a]))
        out["axis_extent_mm"][f"{f:g}"] = ext
        r = dist[min(int(np.searchsorted(cum, f - 1e-12)), len(dist) - 1)]
        out["box_side_mm"][f"{f:g}"] = float(2 * r + sp.max())
    return out
