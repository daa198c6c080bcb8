"""Memory and cost planner: will a stage config fit a GPU, with what micro-batch and accumulation, at what cost.

``plan(cfg)`` (plan.py) builds the stage on fake tensors and combines ``states`` (parameters, gradients,
optimizer, EMA, frozen parts by precision and ZeRO stage), ``activations`` (the UNet step traced block by block)
and ``tracking`` (live tensor bytes through torch's dispatcher; measured CPU peaks through the profiler).
``scripts/plan.py`` is the command line.
"""

from train.planner.plan import PlanOptions, format_table, plan

__all__ = ["PlanOptions", "format_table", "plan"]
