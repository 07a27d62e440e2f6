"""Which layers LoRA really adapts: peft's own resolution of the target names (docs/memory.md eq. M2b).

One function, :func:`lora_targets`, decides it for the engine (adapter parameters, activations) and for the
trace (what it hands peft). Two rules come from the libraries, not from the user's list:

* ``all-linear`` names the ``nn.Linear`` modules of the model, as LLaMA-Factory's ``lora_target: all``
  (``find_all_linear_modules``) resolves it. In transformers >= 5 the routed experts of MoE models are 3-D
  parameters (``gate_up_proj``, ``down_proj`` of an ``Experts`` module), not ``nn.Linear``, and routers are
  custom modules: a name that exists only inside the experts is not part of ``all-linear``.
* peft 0.21.2 rewrites the targets of MoE models whose experts transformers 5 fused
  (``peft/utils/transformers_weight_conversion.py``, ``_convert_peft_config_moe``, called from
  ``BaseTuner.inject_adapter``): for the model types transformers maps to the ``qwen2_moe`` conversion,
  ``gate_proj`` + ``up_proj`` become ``target_parameters`` on the experts' fused ``gate_up_proj`` with rank
  and alpha doubled, ``down_proj`` becomes ``down_proj``, and all three are *removed* from
  ``target_modules``: the dense MLPs (DeepSeek's first layers) and the shared experts lose their adapters,
  and every routed expert gains one. Naming only one of ``gate_proj`` / ``up_proj`` is a peft error.
  peft applies those adapters through ``ParamWrapper``: each forward folds ``W + B A`` into a full-size
  expert stack with one ``baddbmm`` (``_LoraFactorsProxy``), which the grouped matmul saves for backward
  (:func:`planner.engine.activations.expert_lora_merged_bytes`).

Also the home of resolving ``--lora-targets`` (:func:`resolve_lora_targets`) and of which ``nn.Linear`` layers
carry an adapter (:func:`adapter_applies`): :mod:`planner.engine.facts` computes the result once per model and
setup.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.engine.setup import SetupError
from profiles.params import LinearLayer, linear_layers
from profiles.schema import ModelProfile

ROUTER_NAMES = ("gate", "shared_expert_gate")
"""Router projections: ``nn.Linear`` modules that peft's ``all-linear`` never adapts (they are excluded as
classifier-like outputs of one or a few features) and that LoRA targets never name."""
ALL_LINEAR = ("all-linear", "all")
"""The values of ``--lora-targets`` that mean every adaptable linear layer (peft ``target_modules="all-linear"``,
LLaMA-Factory ``lora_target: all``)."""


def adapter_applies(layer: LinearLayer, modules: frozenset[str] | set[str]) -> bool:
    """Whether LoRA adapts ``layer`` as an ``nn.Linear`` given the resolved module names: never the router
    (:data:`ROUTER_NAMES`), never routed experts (3-D parameters in transformers >= 5, adapted through
    :class:`LoraTargets`' expert flags instead), otherwise when its base name (``q_proj``,
    ``shared_experts.down_proj`` -> ``down_proj``) is a target. A derived profile says per layer whether it is
    an adaptable ``nn.Linear`` (:attr:`profiles.params.LinearLayer.lora_adaptable`: not a router, not a routed
    expert tensor, not a module peft refuses such as a Mamba ``out_proj``)."""
    if not layer.lora_adaptable:
        return False
    return layer.name.split(".")[-1] in modules


def targetable_names(layers: tuple[LinearLayer, ...]) -> tuple[str, ...]:
    """The base names ``--lora-targets`` may list for a model, sorted; for a derived profile only its adaptable
    ``nn.Linear`` layers (its routed-expert tensors carry fused names such as ``gate_up_proj``)."""
    return tuple(sorted({x.name.split(".")[-1] for x in layers
                         if x.name not in ROUTER_NAMES and (x.adaptable is None or x.adaptable)}))


def resolve_lora_targets(model: ModelProfile, lora_targets: str) -> tuple[str, ...]:
    """``all-linear`` (or ``all``) -> every targetable base name; a comma list -> those names, each checked.

    Raises :class:`SetupError` naming the bad target and the valid ones."""
    base = targetable_names(linear_layers(model))
    if lora_targets.strip() in ALL_LINEAR:
        return base
    wanted = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    bad = [t for t in wanted if t not in base]
    if bad or not wanted:
        raise SetupError(
            f"LoRA target {', '.join(bad) or repr(lora_targets)!s} is not a linear layer of {model.name}; "
            f"valid: all-linear or a comma list of {', '.join(base)}"
        )
    return wanted

PEFT_FUSED_MOE_MODEL_TYPES = frozenset({
    "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe", "glm4_moe",
    "glm4_moe_lite", "glm_moe_dsa", "glm4v_moe", "longcat_flash", "solar_open", "mellum", "beam", "qwen3_omni_moe",
    "qwen3_omni_moe_thinker", "qwen3_omni_moe_text", "qwen3_next", "hunyuan_v1_moe", "flex_olmo", "olmoe",
    "sarvam_mla", "exaone_moe", "cohere2_moe", "afmoe",
})
"""Model types whose transformers 5.24 checkpoint conversion is the ``qwen2_moe`` pattern
(``transformers/conversion_mapping.py`` ``_MODEL_TO_CONVERSION_PATTERN``), the ones peft 0.21.2's
``_MOE_TARGET_MODULE_MAPPING["qwen2_moe"]`` rewrites (gate_proj / up_proj / down_proj -> expert parameters)."""

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraTargets:
    """What peft adapts: ``modules`` are leaf names of ``nn.Linear`` modules; ``expert_gate_up`` /
    ``expert_down`` say whether every routed expert's fused gate/up (rank 2r) and down (rank r) projections
    carry an adapter (peft ``target_parameters``)."""

    modules: frozenset[str]
    expert_gate_up: bool = False
    expert_down: bool = False

    @property
    def experts(self) -> bool:
        return self.expert_gate_up or self.expert_down

    def passed_to_peft(self) -> list[str]:
        """The ``target_modules`` list to give peft so that it makes exactly these adapters (peft itself turns
        the expert projection names into ``target_parameters``)."""
        extra = set()
        if self.expert_gate_up:
            extra |= {"gate_proj", "up_proj"}
        if self.expert_down:
            extra.add("down_proj")
        return sorted(self.modules | extra)


def linear_module_names(model: ModelProfile) -> frozenset[str]:
    """Leaf names of the model's ``nn.Linear`` modules in transformers >= 5 (not routed experts, not routers)."""
    return frozenset(x.name.split(".")[-1] for x in linear_layers(model) if x.lora_adaptable)


def lora_targets(model: ModelProfile, targets: str) -> LoraTargets:
    """Resolve ``--lora-targets`` as LLaMA-Factory and peft 0.21.2 do (module docstring); raises
    :class:`SetupError` for a name the model lacks or where peft would refuse (only one of the fused gate/up
    projections named)."""
    names = set(resolve_lora_targets(model, targets))
    if targets.strip() in ALL_LINEAR:
        names &= linear_module_names(model)
    if model.moe is None or model.model_type not in PEFT_FUSED_MOE_MODEL_TYPES:
        return LoraTargets(frozenset(names))
    mapped = names & set(EXPERT_PROJECTIONS)
    if ("gate_proj" in mapped) != ("up_proj" in mapped):
        raise SetupError(
            f"LoRA target {'gate_proj' if 'gate_proj' in mapped else 'up_proj'} alone: peft 0.21 fuses the experts' "
            f"gate_proj and up_proj of {model.name} into gate_up_proj; target both or neither")
    return LoraTargets(frozenset(names - mapped), "gate_proj" in mapped, "down_proj" in mapped)


def expert_adapter_params(model: ModelProfile, targets: LoraTargets, rank: int) -> int:
    """Adapter parameters peft's ``ParamWrapper`` adds to the routed experts (eq. M2b): per expert, the fused
    gate/up projection gets rank ``2r`` (A: 2r x h, B: 2F x 2r) and the down projection rank ``r``
    (A: r x F, B: h x r); ``F`` is the expert width. 175.5M of the 179.1M trainable parameters peft makes for DeepSeek-V2-Lite at r = 8."""
    if model.moe is None or not targets.experts:
        return 0
    h, f = model.hidden_size, model.moe.expert_intermediate_size
    experts = (model.num_layers - model.moe.dense_layers) * model.moe.num_experts
    per = 0
    if targets.expert_gate_up:
        per += 2 * rank * (h + 2 * f)
    if targets.expert_down:
        per += rank * (f + h)
    return per * experts
