"""``napari-vit3d train-seg`` and ``napari-vit3d train-dino``: train the bundled models reproducibly.

    napari-vit3d train-seg  --config CFG.json --out RUN_DIR [--data-dir DIR] [--resume] [--device cpu]
    napari-vit3d train-dino --config CFG.json --out RUN_DIR [--data-dir DIR] [--resume] [--device cpu]
    napari-vit3d train-prompt --config CFG.json --out RUN_DIR --data-dir DIR [--resume] [--device cpu]

``--data-dir`` is the folder with the real scans (``colin27/``, ``mni152_2009a/``) used to build the
synthetic bank when the config's bank file does not exist yet. ``--export DEST/NAME`` writes the
finished run's weights (fp16) and spec as ``DEST/NAME.safetensors`` + ``DEST/NAME.json``.
"""

from __future__ import annotations

import json
from pathlib import Path


def _common(p):
    p.add_argument("--config", required=True, help="training configuration (JSON)")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, log and weights go here")
    p.add_argument("--data-dir", default=None, help="folder of the real scans, to build the synthetic bank if missing")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this step (with a checkpoint) without changing the schedule; --resume continues")
    p.add_argument("--export", default=None, metavar="DEST/NAME",
                   help="after training, write DEST/NAME.safetensors (fp16) + DEST/NAME.json")


def register(subparsers) -> None:
    p = subparsers.add_parser("train-seg", help="train a segmentation model on synthetic + real brain scans")
    _common(p)
    p.set_defaults(func=_run_seg)
    p = subparsers.add_parser("train-dino", help="DINO self-distillation pre-training of a 3D ViT (CLS, patch 8)")
    _common(p)
    p.set_defaults(func=_run_dino)
    p = subparsers.add_parser("train-prompt", help="train the click-prompted (promptable) segmentation model")
    _common(p)
    p.set_defaults(func=_run_prompt)


def _export(args, kind: str) -> None:
    if not args.export:
        return
    from ..training.train_seg import export_bundled

    dest = Path(args.export)
    cfg = json.loads(Path(args.config).read_text())
    export_bundled(args.out, dest.parent, dest.name, description=cfg.get("description", ""),
                   card=cfg.get("card"), extra=cfg.get("export_extra"))
    print(f"exported {kind} model to {dest}.json")


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))


def _run_trainer(args, train, kind: str) -> int:
    """Run ``train`` (``train_seg`` or ``train_prompt``) from the command's options; export when finished."""
    from ..training.common import load_config

    _threads(args)
    summary = train(load_config(args.config), args.out, data_dir=args.data_dir, resume=args.resume,
                    device=args.device, progress=not args.no_progress, max_steps=args.max_steps)
    print(json.dumps(summary))
    if summary["finished"]:
        _export(args, kind)
    return 0


def _run_seg(args) -> int:
    from ..training.train_seg import train_seg

    return _run_trainer(args, train_seg, "segmentation")


def _run_dino(args) -> int:
    from ..training.common import load_config
    from ..training.train_dino import train_dino

    _threads(args)
    summary = train_dino(load_config(args.config), args.out, data_dir=args.data_dir, resume=args.resume,
                         device=args.device, progress=not args.no_progress, max_steps=args.max_steps)
    print(json.dumps(summary))
    if args.export:
        print("note: a DINO run has no segmentation decoder; fine-tune it with train-seg (config 'init') and "
              "export that")
    return 0


def _run_prompt(args) -> int:
    from ..training.train_prompt import train_prompt

    return _run_trainer(args, train_prompt, "promptable")
