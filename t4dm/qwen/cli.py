"""``t4dm train --phase 1|2``: train the unified model from the command line.

Wire it into ``t4dm/cli.py`` with ``add_train_parser(sub)`` inside ``build_parser()``. The handler builds the
model (a local Qwen2 folder through :func:`~t4dm.qwen.load_backbone`, or ``--tiny`` for a random tiny
model), or reloads it from ``--resume`` (the checkpoint's shape and LoRA), and calls
:func:`~t4dm.qwen.training.train`. Bad input prints ``t4dm train: <field>=<value>: <reason>`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["TINY_STACK", "add_train_parser", "build_model", "run_train"]

#: The stack of ``--tiny`` models: 2 blocks of width 32, 2 heads, after decoder layer 2 (as the tests).
TINY_STACK = {"layer": 2, "d_stack": 32, "n_blocks": 2, "n_heads": 2}


def _blocks(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--blocks must be comma-separated ints, got {text!r}") from exc


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` command to ``subparsers`` (from ``parser.add_subparsers()``); returns its parser."""
    p = subparsers.add_parser(
        "train",
        help="train the unified model: --phase 1 backprop + LoRA, --phase 2 three-factor rule",
        description="Train the unified model (Qwen2 + cortical stack) on token ids or a text file.",
    )
    p.add_argument(
        "--phase", type=int, required=True, help="1: backprop through stack + LoRA; 2: three-factor rule"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a local Qwen2 checkpoint folder (nothing is downloaded)")
    source.add_argument("--tiny", action="store_true", help="a random tiny Qwen2 (vocab 256) for smoke runs")
    p.add_argument("--data", required=True, help="token ids (.npy, 1-D stream or 2-D rows) or a text file")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="for a text file: 'bytes' (UTF-8 bytes as ids) or a local tokenizer folder "
        "(default: the --model folder; 'bytes' with --tiny)",
    )
    p.add_argument("--steps", type=int, required=True, help="train up to this step")
    p.add_argument("--out", required=True, help="checkpoint folder (step-<n> subfolders)")
    p.add_argument("--resume", default=None, help="a checkpoint (or an --out folder: its latest) to continue")
    p.add_argument(
        "--init", default=None, help="start from a checkpoint's weights (any phase: e.g. phase 2 after phase 1) "
        "at step 0, without its optimizer or history",
    )  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="phase 1 AdamW learning rate (default 1e-3)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="phase 1 gradient-norm clip (0: none)")
    p.add_argument("--warmup-steps", type=int, default=0, help="phase 1: linear learning-rate warm-up steps")
    p.add_argument(
        "--lr-schedule", choices=("constant", "cosine"), default="constant",
        help="phase 1: after the warm-up, constant or cosine down to 0.1 x lr at --steps",
    )  # fmt: skip
    p.add_argument("--val-data", default=None, help="held-out token ids or text (as --data) to validate on")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: at the end)")
    p.add_argument("--val-batches", type=int, default=4, help="validation batches (default 4)")
    p.add_argument("--seed", type=int, default=0, help="data order, per-step RNG and the --tiny model")
    p.add_argument("--quantize", choices=("nf4", "none"), default="nf4", help="--model: load in NF4 or not")
    p.add_argument(
        "--layer", type=int, default=None, help="decoder layer the stack follows (default 17; 2 tiny)"
    )
    p.add_argument("--blocks", type=_blocks, default=None, help="phase 2: comma-separated stack blocks")
    p.add_argument("--dopamine", type=float, default=None, help="phase 2: fixed dopamine instead of reward")
    p.add_argument(
        "--rule",
        choices=("three-factor", "perturbation"),
        default="three-factor",
        help="phase 2: STDP eligibility x dopamine on the blocks' qk_proj (default), or node perturbation "
        "on one layer (--target)",
    )
    p.add_argument(
        "--target", default=None, help="phase 2 perturbation: the layer to train (default 'up'; e.g. "
        "'stack.blocks.0.out_proj')",
    )  # fmt: skip
    p.add_argument("--sigma", type=float, default=0.05, help="phase 2 perturbation: noise std (default 0.05)")
    p.add_argument(
        "--plastic-lr", type=float, default=1e-3, help="phase 2 perturbation: learning rate (default 1e-3)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def build_model(args: argparse.Namespace, resume_from: str | None = None) -> Any:
    """The :class:`~t4dm.qwen.UnifiedModel` the command trains: from ``resume_from`` (its shape and LoRA), or
    new with LoRA adapters (``r=16, alpha=32`` on ``q_proj``, ``v_proj``)."""
    import torch

    from .backbone import load_backbone
    from .checkpoint import load_checkpoint
    from .unified import DEFAULT_LAYER, UnifiedModel

    if args.tiny:
        from transformers import Qwen2ForCausalLM

        from .config import tiny_qwen_config

        torch.manual_seed(args.seed)
        backbone = Qwen2ForCausalLM(tiny_qwen_config())
        shape = dict(TINY_STACK)
        if args.layer is not None:
            shape["layer"] = args.layer
    else:
        backbone = load_backbone(args.model, quantize=args.quantize)
        shape = {"layer": DEFAULT_LAYER if args.layer is None else args.layer}
    if resume_from is not None:
        return load_checkpoint(resume_from, backbone)
    torch.manual_seed(args.seed + 1)
    model = UnifiedModel(backbone, **shape)
    model.add_lora()
    return model


def _tokenizer(args: argparse.Namespace) -> Any:
    if all(path is None or path.endswith(".npy") for path in (args.data, args.val_data)):
        return None
    if args.tokenizer == "bytes" or (args.tokenizer is None and args.tiny):
        return "bytes"
    from transformers import AutoTokenizer

    folder = args.tokenizer or args.model
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` command: prints a JSON summary (phase, step, first and last loss, last checkpoint)."""
    from t4dm.errors import InvalidInput

    from .training import latest_checkpoint, train

    try:
        if args.phase not in (1, 2):
            raise InvalidInput("phase", args.phase, "expected 1 or 2")
        if not os.path.isfile(args.data):
            raise InvalidInput("data", args.data, "no such file")
        if args.val_data is not None and not os.path.isfile(args.val_data):
            raise InvalidInput("val_data", args.val_data, "no such file")
        if args.init is not None and args.resume is not None:
            raise InvalidInput(
                "init", args.init, "--init starts afresh from weights; --resume continues a run"
            )
        resume_from = None if args.resume is None else latest_checkpoint(args.resume)
        init_from = None if args.init is None else latest_checkpoint(args.init)
        rule = None
        if args.rule == "perturbation":
            from t4dm.learning import NodePerturbation

            rule = NodePerturbation(sigma=args.sigma, learning_rate=args.plastic_lr)
        model = build_model(args, resume_from or init_from)
        result = train(
            model,
            args.data,
            phase=args.phase,
            steps=args.steps,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lr=args.lr,
            grad_clip=args.grad_clip if args.grad_clip > 0 else None,
            out=args.out,
            checkpoint_every=args.checkpoint_every,
            resume=resume_from,
            seed=args.seed,
            tokenizer=_tokenizer(args),
            blocks=args.blocks,
            dopamine=args.dopamine,
            rule=rule,
            target=args.target,
            warmup_steps=args.warmup_steps,
            lr_schedule=args.lr_schedule,
            val_data=args.val_data,
            val_every=args.val_every,
            val_batches=args.val_batches,
            progress=not args.no_progress,
        )
    except InvalidInput as exc:
        print(f"t4dm train: {exc}", file=sys.stderr)
        return 2
    summary = {
        "phase": result.phase,
        "step": result.step,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "val_loss": result.val_losses[-1][1] if result.val_losses else None,
        "checkpoint": result.checkpoints[-1] if result.checkpoints else None,
    }
    print(json.dumps(summary))
    return 0
