"""Label post-processing that a model's spec asks for (``ModelSpec.postprocess``), on the scan's own grid.

One step exists: ``"tissue_em"`` — the tissue classes inside the predicted brain re-decided at the scan's
own resolution by the scan's own intensities, with the network's probabilities as the spatial prior. The
network predicts on its 2 mm grid and its tissue borders come back smooth (trilinear logits); cortex and
white matter are thinner than that. Inside the voxels the network labels as one of ``labels`` (e.g. CSF,
gray matter, white matter), each class gets one Gaussian of intensity, fitted by expectation-maximisation
(EM) with the responsibilities ``r_k ∝ p_k^prior_power · N(I; μ_k, σ_k)``, ``p_k`` the network's
probabilities of the classes renormalised over them; the label is the argmax of ``r``. This is the classical
atlas-prior mixture model (as in SPM's and FSL FAST's tissue classification) with the network in the
atlas's place. The brain mask (the union of ``labels``) is never changed, only which of ``labels`` each of
its voxels gets. The parameters (3 means, 3 variances) are fitted on an evenly spaced subsample of the
brain voxels, then one E-step labels every voxel.

Limits: one Gaussian per class and no bias-field model (a strong intensity inhomogeneity is left to the
prior), one input channel.
"""

from __future__ import annotations

import numpy as np

from ..models.spec import TISSUE_EM, TISSUE_EM_DEFAULTS


def tissue_em(image: np.ndarray, labels: np.ndarray, log_prior_at, cfg: dict) -> tuple[np.ndarray, dict]:
    """Re-decide ``cfg["labels"]`` inside their union by intensity with the network's probabilities as prior.

    ``image``: the scan's channel on the scan grid (X, Y, Z); ``labels``: the network's labels there;
    ``log_prior_at(mask)``: the log of the network's probabilities of ``cfg["labels"]`` (in that order) at
    the voxels of ``mask``, an (N, K) array, up to a constant per voxel (the logits of those classes will
    do: renormalising over the classes only shifts each row). Returns the new labels and what was fitted
    (per class: mean and sd of intensity; voxels; how many changed)."""
    classes = np.asarray(cfg["labels"], dtype=np.int64)
    lut = np.zeros(max(int(classes.max()), int(labels.max())) + 1, dtype=bool)
    lut[classes] = True
    mask = lut[labels]
    n = int(mask.sum())
    if n < 10 * len(classes):
        return labels, {"skipped": f"only {n} voxels carry the tissue labels"}
    x = np.asarray(image, dtype=np.float32)[mask]
    log_prior = float(cfg["prior_power"]) * np.asarray(log_prior_at(mask), dtype=np.float32)
    step = max(1, n // int(cfg["sample"]))
    xs, lps = x[::step, None], log_prior[::step]
    r = _softmax(lps)
    floor = np.float32(1e-6 * (float(np.var(xs)) + 1e-12))
    for _ in range(int(cfg["iterations"])):                 # EM on the subsample
        w = np.maximum(r.sum(axis=0), 1e-6)
        mu = (r * xs).sum(axis=0) / w
        var = np.maximum((r * (xs - mu) ** 2).sum(axis=0) / w, floor)
        r = _softmax(lps - 0.5 * (xs - mu) ** 2 / var - 0.5 * np.log(var))
    post = log_prior - 0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(var)   # one E-step on every voxel
    out = labels.copy()
    out[mask] = classes[np.argmax(post, axis=1)].astype(labels.dtype)
    fitted = {int(c): {"mean": round(float(m), 4), "sd": round(float(np.sqrt(v)), 4)}
              for c, m, v in zip(classes, mu, var)}
    return out, {"classes": fitted, "voxels": n, "changed": int((out != labels).sum())}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["TISSUE_EM", "TISSUE_EM_DEFAULTS", "tissue_em"]
