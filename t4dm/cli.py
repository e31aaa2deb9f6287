"""The ``t4dm`` command line: ``t4dm demo``, ``t4dm bench …``, ``t4dm eval locomo``, ``t4dm serve``, ``t4dm mcp``,
``t4dm export`` / ``t4dm import``, ``t4dm info PATH`` (and ``t4dm train`` with the model extras)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    if args.storage:
        from t4dm.demo_storage import run_storage_demo

        run_storage_demo(path=args.path, n=args.n)
        return 0
    from t4dm.demo import run_demo

    run_demo(out_dir=args.out)
    return 0


def _bench_storage(args: argparse.Namespace) -> int:
    from t4dm.bench.storage import run_storage_bench

    peers = [p for p in args.peers.split(",") if p] if args.peers else []
    run_storage_bench(n=args.n, dim=args.dim, peers=peers, json_path=args.json, workdir=args.workdir)
    return 0


def _bench_search(args: argparse.Namespace) -> int:
    from t4dm.bench.search import run_search_bench

    peers = [p for p in args.peers.split(",") if p] if args.peers else []
    dims = tuple(int(d) for d in args.dims.split(","))
    run_search_bench(n=args.n, dims=dims, peers=peers, json_path=args.json, workdir=args.workdir)
    return 0


def _bench_graph(args: argparse.Namespace) -> int:
    from t4dm.bench.graph import run_graph_bench

    run_graph_bench(
        nodes=args.nodes, edges=args.edges, seeds=args.seeds, depth=args.depth, json_path=args.json
    )
    return 0


def _bench_embed(args: argparse.Namespace) -> int:
    from t4dm.bench.embed import run_embed_bench

    run_embed_bench(repeat=args.repeat, json_path=args.json)
    return 0


def _bench_lif(args: argparse.Namespace) -> int:
    from t4dm.bench.lif import run_lif_bench

    run_lif_bench(args.device, args.json, sweep=args.sweep)
    return 0


def _bench_attention(args: argparse.Namespace) -> int:
    from t4dm.bench.attention import run_attention_bench

    run_attention_bench(args.device, args.json, fla_max_configs=args.fla_max_configs, sweep=args.sweep)
    return 0


def _bench_stack(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from t4dm.bench.stack import run_stack_bench

    run_stack_bench(args.device, args.json)
    return 0


def _eval_locomo(args: argparse.Namespace) -> int:
    from t4dm.eval.locomo import run_locomo_eval

    ks = [int(k) for k in args.k.split(",") if k.strip()]
    seed = None if args.seed < 0 else args.seed
    run_locomo_eval(
        args.data, args.out, ks=ks, embedder=args.embedder, workdir=args.workdir, seed=seed,
        consolidate_after_days=args.consolidate_after,
    )  # fmt: skip
    return 0


def _info(args: argparse.Namespace) -> int:
    from t4dm.errors import T4DXError
    from t4dm.storage import T4DX

    try:
        with T4DX.open(args.path, read_only=True) as db:  # beside a writer (a server) too
            print(json.dumps(db.stats(), indent=2))
    except T4DXError as exc:
        print(f"t4dm info: {exc}", file=sys.stderr)
        return 2
    return 0


def _entry(command: str, module: str, name: str, extra: str) -> Any:
    """``module.name``, or None after saying which extra ``t4dm <command>`` needs."""
    try:
        return getattr(import_module(module), name)
    except ImportError as exc:
        print(f"t4dm {command} needs the {extra} extra (pip install 't4dm[{extra}]'): {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    serve = _entry("serve", "t4dm.server", "serve", "server")
    if serve is None:
        return 2
    token = args.token if args.token is not None else os.environ.get("T4DM_TOKEN") or None
    tokens = _load_tokens("serve", args.tokens)
    if tokens is False:
        return 2
    serve(args.path, host=args.host, port=args.port, embedder=args.embedder, token=token, tokens=tokens,
          read_only=args.read_only, refresh_every=args.refresh_every)  # fmt: skip
    return 0


def _load_tokens(command: str, path: str | None) -> str | bool | None:
    """The tokens file's path once it has been read and checked (the server watches it and reads it again when it
    changes), None without one, False (after saying why) when it cannot be used."""
    from t4dm.auth import load_tokens
    from t4dm.errors import InvalidInput

    if path is None:
        return None
    try:
        load_tokens(path)
        return os.path.abspath(path)
    except InvalidInput as exc:
        print(f"t4dm {command}: {exc}", file=sys.stderr)
        return False


def _mcp(args: argparse.Namespace) -> int:
    run_mcp = _entry("mcp", "t4dm.adapters.mcp", "run_mcp", "mcp")
    if run_mcp is None:
        return 2
    token = args.token if args.token is not None else os.environ.get("T4DM_TOKEN") or None
    if args.transport == "stdio" and (args.token is not None or args.tokens is not None):
        print(
            "t4dm mcp: --token and --tokens guard the HTTP transport; stdio has no network side",
            file=sys.stderr,
        )
        return 2
    tokens = _load_tokens("mcp", args.tokens)
    if tokens is False:
        return 2
    if args.transport == "stdio":  # T4DM_TOKEN, if set, is for the HTTP transport
        run_mcp(args.path, transport="stdio", embedder=args.embedder, read_only=args.read_only)
    else:
        run_mcp(args.path, transport=args.transport, embedder=args.embedder, token=token, tokens=tokens,
                host=args.host, port=args.port, read_only=args.read_only)  # fmt: skip
    return 0


def _search(args: argparse.Namespace) -> int:
    from t4dm.errors import InvalidInput, T4DXError
    from t4dm.memory import Memory
    from t4dm.memory.memory import parse_time

    try:
        times = {
            "valid_at": parse_time(args.valid_at, "--valid-at"),
            "as_of": parse_time(args.as_of, "--as-of"),
        }
        with Memory(args.path, embedder=args.embedder, read_only=True) as memory:  # beside a writer too
            hits = memory.search(
                args.query,
                user_id=args.user_id,
                agent_id=args.agent_id,
                run_id=args.run_id,
                k=args.k,
                **times,
            )
    except (InvalidInput, T4DXError) as exc:
        print(f"t4dm search: {exc}", file=sys.stderr)
        return 2
    for hit in hits:
        valid = hit.memory.valid_from
        print(json.dumps({"id": hit.id, "score": round(hit.score, 4), "text": hit.text,
                          "valid_from": None if valid is None else valid.isoformat()}))  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    from t4dm.errors import InvalidInput
    from t4dm.memory import Memory

    if not os.path.isdir(args.path):
        print(f"t4dm export: no memory at {args.path!r}", file=sys.stderr)
        return 2
    try:
        with Memory(args.path, embedder=args.embedder, read_only=True) as memory:  # beside a writer too
            counts = memory.export_jsonl(args.out, history=args.history)
    except InvalidInput as exc:
        print(f"t4dm export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **counts}))
    return 0


def _erase(args: argparse.Namespace) -> int:
    from t4dm.errors import InvalidInput, UnknownId
    from t4dm.memory import Memory

    scope = {"user_id": args.user_id, "agent_id": args.agent_id, "run_id": args.run_id}
    if bool(args.ids) == any(v is not None for v in scope.values()):
        print(
            "t4dm erase: name the memories (--id ...) or a scope (--user-id / --agent-id / --run-id)",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(args.path):
        print(f"t4dm erase: no memory at {args.path!r}", file=sys.stderr)
        return 2
    try:
        with Memory(args.path, embedder=args.embedder) as memory:
            erased = memory.erase(args.ids) if args.ids else memory.erase_all(**scope)
            if args.compact:  # every version gone from the files now, not at the next compaction
                memory.db.compact()
    except (InvalidInput, UnknownId) as exc:
        print(f"t4dm erase: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"erased": erased, "compacted": args.compact}))
    return 0


def _import(args: argparse.Namespace) -> int:
    from t4dm.errors import InvalidInput
    from t4dm.memory import Memory

    try:
        with Memory(args.path, embedder=args.embedder) as memory:
            counts = memory.import_jsonl(args.file)
    except InvalidInput as exc:
        print(f"t4dm import: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"path": args.path, **counts}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t4dm", description="T4DM: memory for agents, with time first-class."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end demonstration (the main job)")
    demo.add_argument("--out", default=None, help="folder for the figures (default ./t4dm-demo)")
    demo.add_argument("--storage", action="store_true", help="the storage engine alone, on synthetic vectors")
    demo.add_argument("--path", default=None, help="--storage: store folder (default: a temporary one)")
    demo.add_argument("--n", type=int, default=20_000, help="--storage: episodes to write (default 20000)")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks that run the peer beside ours and print the ratio")
    bench_sub = bench.add_subparsers(dest="suite", required=True)
    storage = bench_sub.add_parser("storage", help="T4DX: insert, get, scan, compaction, Bloom filter")
    storage.add_argument("--n", type=int, default=100_000, help="items (default 100000)")
    storage.add_argument("--dim", type=int, default=384, help="vector dimension (default 384)")
    storage.add_argument(
        "--peers",
        default="rbloom,lancedb,chroma",
        help="comma-separated peers to run beside T4DX (default: all)",
    )
    storage.add_argument("--json", default=None, help="also write the results to this JSON file")
    storage.add_argument("--workdir", default=None, help="folder for the stores (default: a temporary one)")
    storage.set_defaults(func=_bench_storage)

    search = bench_sub.add_parser("search", help="T4DX SEARCH beside faiss HNSW, hnswlib, LanceDB and Chroma")
    search.add_argument("--n", type=int, default=100_000, help="items (default 100000)")
    search.add_argument("--dims", default="384,1024", help="comma-separated dimensions (default 384,1024)")
    search.add_argument("--peers", default="faiss,hnswlib,lancedb,chroma", help="comma-separated peers")
    search.add_argument("--json", default=None, help="also write the results to this JSON file")
    search.add_argument("--workdir", default=None, help="folder for the stores (default: a temporary one)")
    search.set_defaults(func=_bench_search)

    graph = bench_sub.add_parser("graph", help="TRAVERSE beside scipy.sparse on a random graph")
    graph.add_argument("--nodes", type=int, default=1_000_000)
    graph.add_argument("--edges", type=int, default=10_000_000)
    graph.add_argument("--seeds", type=int, default=1000)
    graph.add_argument("--depth", type=int, default=2)
    graph.add_argument("--json", default=None, help="also write the results to this JSON file")
    graph.set_defaults(func=_bench_graph)

    embed = bench_sub.add_parser(
        "embed", help="the default embedder on ONNX Runtime beside sentence-transformers (PyTorch)"
    )
    embed.add_argument("--repeat", type=int, default=30)
    embed.add_argument("--json", default=None, help="also write the results to this JSON file")
    embed.set_defaults(func=_bench_embed)

    lif = bench_sub.add_parser(
        "lif", help="fused LIF kernel beside SpikingJelly and an eager loop (fwd, fwd+bwd)"
    )
    lif.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    lif.add_argument("--json", default=None, help="also write the results to this JSON file")
    lif.add_argument("--sweep", action="store_true", help="also sweep chunk and block sizes")
    lif.set_defaults(func=_bench_lif)

    attention = bench_sub.add_parser(
        "attention", help="RWKV-6 and spike attention beside flash-linear-attention and SDPA (bf16)"
    )
    attention.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    attention.add_argument("--json", default=None, help="also write the results to this JSON file")
    attention.add_argument(
        "--fla-max-configs", type=int, default=4, help="autotune configs kept per fla kernel (0 = all)"
    )
    attention.add_argument(
        "--no-sweep", dest="sweep", action="store_false", help="skip our chunk/block sweep"
    )
    attention.set_defaults(func=_bench_attention)

    stack = bench_sub.add_parser(
        "stack", help="six-block spiking cortical stack on the kernels beside the naive references"
    )
    stack.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    stack.add_argument("--json", default=None, help="also write the results to this JSON file")
    stack.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    stack.set_defaults(func=_bench_stack)

    evaluate = sub.add_parser("eval", help="evaluations")
    eval_sub = evaluate.add_subparsers(dest="evaluation", required=True)
    locomo = eval_sub.add_parser("locomo", help="evidence retrieval on LoCoMo: T4DM beside dense and BM25")
    locomo.add_argument("--data", required=True, help="a LoCoMo JSON file (a list of samples)")
    locomo.add_argument("--out", default=None, help="write the results to this JSON file")
    locomo.add_argument("--k", default="1,5,10,20", help="comma-separated cut-offs (default 1,5,10,20)")
    locomo.add_argument("--embedder", default=None, help="a sentence-transformers model directory")
    locomo.add_argument("--workdir", default=None, help="folder for the temporary store")
    locomo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the memories' ids, which break ties between equal scores: the same seed, the same figures "
        "(default 0; -1: random ids)",
    )
    locomo.add_argument(
        "--consolidate-after",
        type=float,
        default=None,
        metavar="DAYS",
        help="consolidate (NREM, REM, PRUNE) between ingest and questions, as if DAYS days had passed with no "
        "search: what sleep costs retrieval",
    )
    locomo.set_defaults(func=_eval_locomo)

    serve = sub.add_parser("serve", help="serve a memory over HTTP (FastAPI; the OpenAPI schema at /docs)")
    serve.add_argument("--path", required=True, help="the memory's folder (created when missing)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--embedder", default=None, help="a sentence-transformers model directory")
    serve.add_argument(
        "--token",
        default=None,
        help="ask every request for 'Authorization: Bearer TOKEN' (default: the T4DM_TOKEN variable, else none;"
        " the variable keeps the token out of the process list)",
    )
    serve.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help='a JSON file of per-user tokens, {"TOKEN": "USER_ID", ...} (\'*\' for every user): each '
        "token reaches its user's memories only",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="serve the memory beside the process that writes it (a read replica): writes answer 403",
    )
    serve.add_argument(
        "--refresh-every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --read-only: catch up with the writer before a request when the last catch-up is this old "
        "(default 1; 0: every request)",
    )
    serve.set_defaults(func=_serve)

    mcp = sub.add_parser("mcp", help="serve a memory as a Model Context Protocol server (tools for agents)")
    mcp.add_argument("--path", required=True, help="the memory's folder (created when missing)")
    mcp.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    mcp.add_argument("--host", default="127.0.0.1", help="streamable-http: address (default 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8001, help="streamable-http: port (default 8001)")
    mcp.add_argument("--embedder", default=None, help="a sentence-transformers model directory")
    mcp.add_argument(
        "--token",
        default=None,
        help="streamable-http: require 'Authorization: Bearer TOKEN' on every request (default: $T4DM_TOKEN)",
    )
    mcp.add_argument(
        "--tokens",
        default=None,
        metavar="FILE",
        help='streamable-http: a JSON file of per-user tokens, {"TOKEN": "USER_ID", ...} (\'*\' for every user): each '
        "token reaches its user's memories only",
    )
    mcp.add_argument(
        "--read-only",
        action="store_true",
        help="serve the memory beside the process that writes it: recall and history only, each catching up first",
    )
    mcp.set_defaults(func=_mcp)

    search = sub.add_parser(
        "search", help="search a memory (read-only: beside a server or agent that writes it too); JSON lines"
    )
    search.add_argument("query")
    search.add_argument("--path", required=True, help="the memory's folder")
    search.add_argument("--user-id", default=None)
    search.add_argument("--agent-id", default=None)
    search.add_argument("--run-id", default=None)
    search.add_argument("-k", type=int, default=5, help="how many memories (default 5)")
    search.add_argument("--valid-at", default=None, help="what was true then (ISO 8601 with a time zone)")
    search.add_argument("--as-of", default=None, help="what the memory knew then (ISO 8601 with a time zone)")
    search.add_argument("--embedder", default=None, help="the memory's sentence-transformers model directory")
    search.set_defaults(func=_search)

    export = sub.add_parser("export", help="write a memory's memories and edges to a JSON Lines file")
    export.add_argument("--path", required=True, help="the memory's folder")
    export.add_argument("--out", required=True, help="the JSON Lines file to write")
    export.add_argument("--embedder", default=None, help="the memory's sentence-transformers model directory")
    export.add_argument(
        "--history",
        action="store_true",
        help="every version, deletion and edge the store holds, in the order written (an import replays them "
        "at their own times into a new memory)",
    )
    export.set_defaults(func=_export)
    erase = sub.add_parser(
        "erase",
        help="erase memories for good (the right to be forgotten): every version, their edges, what derives "
        "from them; then compact, so no file of the store holds them",
    )
    erase.add_argument("--path", required=True, help="the memory's folder")
    erase.add_argument(
        "--id", dest="ids", action="append", default=[], help="a memory id (repeat for several)"
    )
    erase.add_argument("--user-id", default=None, help="every memory this user ever had")
    erase.add_argument("--agent-id", default=None, help="every memory of this agent (with --user-id: both)")
    erase.add_argument(
        "--run-id", default=None, help="every memory of this run (with the others: all of them)"
    )
    erase.add_argument("--embedder", default=None, help="the memory's sentence-transformers model directory")
    erase.add_argument(
        "--no-compact",
        dest="compact",
        action="store_false",
        help="leave the past to the store's next full compaction (until then as_of reads still find it)",
    )
    erase.set_defaults(func=_erase)
    imp = sub.add_parser("import", help="add an export to a memory, re-embedded with its embedder")
    imp.add_argument("--path", required=True, help="the memory's folder (created when missing)")
    imp.add_argument("--file", required=True, help="a file written by t4dm export")
    imp.add_argument("--embedder", default=None, help="a sentence-transformers model directory")
    imp.set_defaults(func=_import)

    info = sub.add_parser("info", help="print a store's statistics")
    info.add_argument("path")
    info.set_defaults(func=_info)

    try:  # the unified model's extras (torch, transformers, peft) are imported only when it runs
        from t4dm.qwen.cli import add_train_parser
    except ImportError:
        pass
    else:
        add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
