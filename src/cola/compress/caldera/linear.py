"""CalderaLinear, the module computing with a layer's stored factors, and the safetensors file that holds them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from cola.atomic import atomic_path
from cola.compress.caldera.config import CalderaConfig
from cola.compress.caldera.decompose import CalderaResult, caldera_decompose
from cola.compress.caldera.factors import CalderaFactors
from cola.compress.caldera.hadamard import rotate, seeded_signs, to_original_basis
from cola.errors import ColaError

FORMAT = "cola-caldera/1"
_EARLIER_DEFAULTS = {"quantizer": "uniform", "hadamard": False, "finetune_rank": 0, "finetune_steps": 0}


class CalderaLinear(torch.nn.Module):
    """y = x (Q + L R)ᵀ + b computed from the stored factors, in float32.

    Two forwards:
    * from the factors (the default): Q is dequantized from its codes and the low-rank part applied as two thin
      matmuls, y = x Qᵀ + (x Rᵀ) Lᵀ, in the rotated basis (x Vᵀ in, · U out) when the layer has a rotation;
      the dense m×n Ŵ is never formed, and only the codes stay in memory between forwards.
    * cached (`cache_dense()`): Ŵ = Uᵀ (Q + L R) V is built once and kept, and every forward is one dense matmul;
      for evaluation, at the memory of a dense float32 layer. The cache is not saved and is dropped by
      `cache_dense(False)`.

    The codes, scales and the rotation seed are buffers, so `state_dict()` holds exactly what is stored.
    """

    def __init__(self, factors: CalderaFactors, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = factors.config
        self.out_features, self.in_features = factors.shape
        self._keys = tuple(factors.tensors())
        # Contiguous copies: a fresh module and one reloaded from disk must run the same matmul kernels (a
        # transposed view takes another kernel on some CPUs, and the outputs then differ in the last bits).
        for key, tensor in factors.tensors().items():
            self.register_buffer(key, tensor.detach().clone(memory_format=torch.contiguous_format))
        self.register_buffer("bias", bias.detach().clone(memory_format=torch.contiguous_format)
                             if bias is not None else None)
        self.register_buffer("dense_weight", None, persistent=False)  # (m, n) float32 Ŵ, once cache_dense() ran
        # (m, n) float32 Uᵀ (Q + L R) V of the frozen components with unsigned rotations, while training
        self.register_buffer("fixed_weight", None, persistent=False)

    def cache_dense(self, enabled: bool = True) -> CalderaLinear:
        """Build Ŵ (out_features × in_features, float32, original basis) once and use it in every later forward
        (enabled), or drop it and compute from the factors again. Returns the module."""
        self.dense_weight = self.factors.dequantize().to(self.q_codes.device) if enabled else None
        return self

    def start_training(self, signs: bool = False) -> list[torch.nn.Parameter]:
        """Turn the float16 components of L and R (and with `signs` the rotation's sign vectors, created from the
        seed's ±1 when absent) into float32 parameters, and fix the frozen components (Q and the quantized part of
        L R) as one dense matrix for the training forward; returns the parameters. `stop_training` stores them back
        in float16."""
        from dataclasses import replace

        q, left, right = replace(self.factors, l_weight=None, r_weight=None).parts()
        fixed = torch.addmm(q, left, right)
        rotations = self.factors.rotations()
        if rotations is not None:  # the signs apply elementwise in the forward, so they may be trained
            (seed_u, _), (seed_v, _) = rotations
            fixed = to_original_basis(fixed, seed_u, seed_v, *self._unit_signs())
        self.fixed_weight = fixed.contiguous()
        trainable = ["l_weight", "r_weight"]
        if signs and self.factors.hadamard_seed is not None:
            from cola.compress.caldera.hadamard import rotation_seeds

            seed_u, seed_v = rotation_seeds(self.factors.hadamard_seed)
            for key, dim, seed in (("u_signs", self.out_features, seed_u), ("v_signs", self.in_features, seed_v)):
                if getattr(self, key, None) is None:
                    self.register_buffer(key, seeded_signs(dim, seed).to(torch.float16).to(self.q_scales.device))
                    self._keys += (key,)
            trainable += ["u_signs", "v_signs"]
        params = []
        for key in trainable:
            value = getattr(self, key, None)
            if value is None:
                continue
            del self._buffers[key]
            param = torch.nn.Parameter(value.detach().to(torch.float32).clone())
            self.register_parameter(key, param)
            params.append(param)
        return params

    def stop_training(self) -> None:
        """Store the trained parameters back as float16 buffers and drop Q's fixed values."""
        for key, param in list(self._parameters.items()):
            if param is None:
                continue
            del self._parameters[key]
            self.register_buffer(key, param.detach().to(torch.float16).contiguous())
        self.fixed_weight = None

    def _unit_signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.q_scales.device
        return torch.ones(self.out_features, device=device), torch.ones(self.in_features, device=device)

    def _training_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Ŵᵀ + b with Ŵ = diag(s_u) Bᵤᵀ (F + L_f R_f) B_v diag(s_v), F the frozen components (`fixed_weight`),
        L_f R_f the float16 ones and B the unsigned rotations: one dense matmul, thin ones and two elementwise sign
        products, where the forward from the factors rotates every activation (the same Ŵ, see `rotate`)."""
        h = x.to(torch.float32)
        left, right = getattr(self, "l_weight", None), getattr(self, "r_weight", None)
        signs_u = signs_v = None
        rotations = self.factors.rotations()
        if rotations is not None:
            (seed_u, signs_u), (seed_v, signs_v) = rotations
            signs_u = seeded_signs(self.out_features, seed_u) if signs_u is None else signs_u
            signs_v = seeded_signs(self.in_features, seed_v) if signs_v is None else signs_v
            h = h * signs_v.to(h.device, torch.float32)
            if left is not None and right is not None:
                unit_u, unit_v = self._unit_signs()
                left = rotate(left.T.to(torch.float32), seed_u, transpose=True, signs=unit_u).T  # Bᵤᵀ L_f
                right = rotate(right.to(torch.float32), seed_v, transpose=True, signs=unit_v)    # R_f B_v
        y = h @ self.fixed_weight.T
        if left is not None and right is not None:
            y = y + (h @ right.T.to(torch.float32)) @ left.T.to(torch.float32)
        if signs_u is not None:
            y = y * signs_u.to(y.device, torch.float32)
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)

    @property
    def factors(self) -> CalderaFactors:
        """The factors, built on the current buffers (no copy)."""
        return CalderaFactors.from_tensors({k: getattr(self, k) for k in self._keys}, self.config, "a module")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, H: torch.Tensor,
                    config: CalderaConfig) -> tuple[CalderaLinear, CalderaResult]:
        """Decompose a Linear layer against its calibration Hessian H; the module lives on the layer's device."""
        result = caldera_decompose(linear.weight.detach(), H, config)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(result.factors, bias).to(linear.weight.device), result

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, q_bits={c.q_bits}, "
                f"lr_bits={c.lr_bits}, rank={c.rank}, hadamard={c.hadamard}, bias={self.bias is not None}, "
                f"cached={self.dense_weight is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_weight is not None:
            bias = self.bias.to(torch.float32) if self.bias is not None else None
            return torch.nn.functional.linear(x.to(torch.float32), self.dense_weight, bias).to(x.dtype)
        if self.fixed_weight is not None:
            return self._training_forward(x)
        factors = self.factors
        q = factors.q_values()
        left, right = factors.low_rank()
        h = x.to(torch.float32)
        rotations = factors.rotations()
        if rotations is not None:
            (seed_u, signs_u), (seed_v, signs_v) = rotations
            h = rotate(h, seed_v, signs=signs_v)                   # x Vᵀ
        y = h @ q.T + (h @ right.T) @ left.T
        if rotations is not None:
            y = rotate(y, seed_u, transpose=True, signs=signs_u)   # · U
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)


# ------------------------------------------------------------------------------------------ save/load


def save_caldera(path: Path, modules: dict[str, CalderaLinear], config: CalderaConfig,
                 metadata: dict[str, str] | None = None) -> None:
    """Write every module's codes, scales and bias to one safetensors file (config and `metadata` in the file's
    metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if module.config != config:
            raise ColaError(f"layer {name} was decomposed with {module.config}, not the {config} being saved")
        tensors.update(module.factors.state_dict(f"{name}."))
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.detach().cpu().contiguous()
    metadata = {**(metadata or {}), "format": FORMAT, "config": json.dumps(asdict(config)),
                "modules": json.dumps(list(modules))}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_caldera(path: Path) -> tuple[dict[str, CalderaLinear], CalderaConfig]:
    """Read a file written by save_caldera: the CalderaLinear modules by name, and the config."""
    from cola.compress.base import read_method_file

    metadata, tensors = read_method_file(path, "CALDERA", FORMAT)
    # settings a file of an earlier cola lacks took the values of that time, not today's defaults
    saved = {**_EARLIER_DEFAULTS, **json.loads(metadata["config"])}
    try:
        config = CalderaConfig(**saved)  # checked at construction
    except ColaError:  # a preset that has since changed: the file's rank and float16 components are its own
        config = CalderaConfig(**{**saved, "preset": None})
    modules = {}
    for name in json.loads(metadata["modules"]):
        factors = CalderaFactors.from_state_dict(tensors, f"{name}.", config)
        modules[name] = CalderaLinear(factors, tensors.get(f"{name}.bias"))
    return modules, config


def replace_with_caldera(model: torch.nn.Module, modules: dict[str, CalderaLinear]) -> None:
    """Swap the named submodules of `model` (dotted names from named_modules()) for their CalderaLinear."""
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, child)
        except AttributeError as exc:
            raise ColaError(f"the model has no module {name!r} to replace with its CALDERA layer") from exc
        old_in, old_out = getattr(old, "in_features", None), getattr(old, "out_features", None)
        if (old_in, old_out) not in ((None, None), (module.in_features, module.out_features)):
            raise ColaError(f"module {name!r} is {old_out}x{old_in} but its CALDERA layer is "
                            f"{module.out_features}x{module.in_features}")
        weight = getattr(old, "weight", None)
        if isinstance(weight, torch.Tensor):
            module = module.to(weight.device)
        setattr(parent, child, module)
