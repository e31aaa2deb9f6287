"""airspeed velocity suite for the kernels, the cortical stack and the unified model's decoding (``make asv``).

On a machine without CUDA these time what a CPU user gets (the PyTorch paths); with CUDA the Triton kernels
(the same shapes, so the figures are comparable only per device). Sizes are small enough for ``asv run
--quick`` on a 2-core VM. ``OperatorDispatch`` times the eager cost of a ``torch.library`` operator (as the
kernels are registered) against a plain Python function doing the same work.
"""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class LIF:
    params = [(256, 16), (4096, 65536)]
    param_names = ["T", "N"]

    def setup(self, T: int, N: int) -> None:
        from t4dm.kernels import lif_multistep

        if DEVICE == "cpu" and T * N > 2**20:
            raise NotImplementedError("too large for the CPU reference")  # asv skips it
        torch.set_num_threads(2)
        self.lif = lif_multistep
        self.x = torch.randn(T, N, device=DEVICE) * 1.5
        self.x_grad = self.x.clone().requires_grad_()
        self.lif(self.x)
        _sync()

    def time_forward(self, T: int, N: int) -> None:
        with torch.no_grad():
            self.lif(self.x)
        _sync()

    def time_forward_backward(self, T: int, N: int) -> None:
        self.lif(self.x_grad, surrogate="sigmoid").sum().backward()
        _sync()


class LinearAttention:
    params = [256, 2048]
    param_names = ["T"]

    def setup(self, T: int) -> None:
        from t4dm.kernels import rwkv6, spike_attention

        if DEVICE == "cpu" and T > 256:
            raise NotImplementedError("too large for the CPU path")
        torch.set_num_threads(2)
        B, H, K = 1, 4, 64
        g = torch.Generator().manual_seed(0)
        self.rwkv6, self.spike_attention = rwkv6, spike_attention
        self.r, self.k, self.v = (torch.randn(B, T, H, K, generator=g).to(DEVICE) for _ in range(3))
        self.w = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)).to(DEVICE)
        self.u = torch.randn(H, K, generator=g).to(DEVICE)
        self.q_spikes = (torch.rand(B, T, H, K, generator=g) < 0.25).float().to(DEVICE)
        self.k_spikes = (torch.rand(B, T, H, K, generator=g) < 0.25).float().to(DEVICE)
        self.log_decay = -torch.logspace(-2, 0, H).to(DEVICE)
        self.time_rwkv6(T)
        self.time_spike_attention(T)

    def time_rwkv6(self, T: int) -> None:
        with torch.no_grad():
            self.rwkv6(self.r, self.k, self.v, self.w, self.u)
        _sync()

    def time_spike_attention(self, T: int) -> None:
        with torch.no_grad():
            self.spike_attention(self.q_spikes, self.k_spikes, self.v, self.log_decay)
        _sync()


class Stack:
    """The six-block stack at a small width: a 64-token forward and one streamed token."""

    def setup(self) -> None:
        from t4dm.spiking import CorticalStack

        torch.set_num_threads(2)
        torch.manual_seed(0)
        self.stack = CorticalStack(6, 256, 4).to(DEVICE).eval()
        self.x = torch.randn(1, 64, 256, device=DEVICE)
        with torch.no_grad():
            self.state = self.stack(self.x, return_state=True).state
        self.time_one_streamed_token()  # the first streamed call warms its own path
        _sync()

    def time_forward_64_tokens(self) -> None:
        with torch.no_grad():
            self.stack(self.x)
        _sync()

    def time_one_streamed_token(self) -> None:
        with torch.no_grad():
            self.stack(self.x[:, :1], state=self.state, return_state=True)
        _sync()

    def time_one_decoded_token(self) -> None:
        """Through a StackDecoder: its state in fixed buffers (one CUDA graph replay on CUDA)."""
        from t4dm.spiking import StackDecoder

        if not hasattr(self, "decoder"):
            with torch.no_grad():
                self.decoder = StackDecoder(self.stack, self.state)
        with torch.no_grad():
            self.decoder(self.x[:, :1])
        _sync()


class UnifiedDecoding:
    """Greedy decoding of a tiny random Qwen2 with the stack after layer 2: 16 new tokens after an 8-token
    prompt, with the KV cache and the stack's stream state."""

    timeout = 120

    def setup(self) -> None:
        from transformers import Qwen2ForCausalLM

        from t4dm.qwen import UnifiedModel, tiny_qwen_config

        torch.set_num_threads(2)
        torch.manual_seed(0)
        base = Qwen2ForCausalLM(tiny_qwen_config()).to(DEVICE).eval()
        self.model = UnifiedModel(base, layer=2, d_stack=32, n_blocks=2, n_heads=2).eval()
        self.prompt = torch.randint(0, 256, (1, 8), device=DEVICE)
        self.model.generate(self.prompt, 2)

    def time_generate_16_tokens(self) -> None:
        self.model.generate(self.prompt, 16)


class OperatorDispatch:
    """A ``torch.library.custom_op`` call against the plain function it wraps (a 4-element clone)."""

    def setup(self) -> None:
        name = "t4dm_asv::clone"
        try:

            @torch.library.custom_op(name, mutates_args=())
            def op(x: torch.Tensor) -> torch.Tensor:
                return x.clone()

            op.register_fake(lambda x: torch.empty_like(x))
        except RuntimeError:  # registered already in this process
            op = torch.ops.t4dm_asv.clone
        self.op = op
        self.x = torch.randn(4)
        for _ in range(3):  # the first calls initialise the dispatcher's Python side
            self.op(self.x)

    def time_custom_op_call(self) -> None:
        self.op(self.x)

    def time_plain_call(self) -> None:
        self.x.clone()
