"""Stages 3, 4b, 5 and 6 — the kernel path: the plan of a step (`plan`, passes over a
typed plan), its lowering to generated functions (`lower`), the kernel sources emitted
from it (`emit`), their compilation and cache (`build`, one compilation per
instruction-set level of `isa`), and the `Kernel` that runs them (`runtime`)."""
