r"""Stage 4a — printing: the derivation as text notation, LaTeX, Markdown and JSON.

`equations(d, fmt, expanded=False)` is `derive equations`: one equation a line for
``text`` (the notation `derive verify` reads) and ``latex`` (the notation
`derive verify --latex` reads), the Markdown document for ``markdown`` and one JSON
document for ``json``. Two SymPy printers know derive's vocabulary
(`derive.cell.symbols`): `TextPrinter` and `LatexPrinter`.

Order. SymPy sorts the terms of a sum alphabetically; the printers do not. A backward
equation is printed flow by flow, as the paper writes it: the external gradient Δ
first, then the flows through consumers of the same step (outputs first, then the
spec's order), then the flows through the next step (spec order)::

    δcᵗ = δyᵗ⊙oᵗ⊙h'(cᵗ) + p_o⊙δōᵗ + p_i⊙δīᵗ⁺¹ + p_f⊙δf̄ᵗ⁺¹ + δcᵗ⁺¹⊙fᵗ⁺¹

Within a product: number, parameters, deltas (and Δ, matrix products, substituted
sums and any sum carrying a delta), forward values (symbols by name and step first),
and last the activation derivative written from the stored output (oᵗ⊙(1 − oᵗ) for
σ'(ōᵗ), 1 − (zᵗ)² for tanh'(z̄ᵗ)) or folded (`DSIGMOID`, `DTANH`: the verify reports).
A per-step parameter term is printed as ∂uᵗ/∂P ⊙ δuᵗ (cᵗ⁻¹ ⊙ δīᵗ). The forward pass
keeps the order of the terms and factors of the spec. Inner sums print their positive
terms first (1 − oᵗ); the setting ``sum_key`` of `TextPrinter` orders plain sums
otherwise (`derive.verification.notation.format_expression`: Δ first, then by the delta carried).

Expanded forms are printed as the structured form with every delta of step t replaced,
in place and in parentheses, by its own expanded form: forward values, Δ and the
deltas of step t+1 only, nothing multiplied out.

Text notation (one equation a line, ``#`` comments; `derive.verification.notation`)::

    dc[t] = dy[t]*o[t]*(1 - tanh(c[t])**2) + p_o*do_bar[t] + ... + dc[t+1]*f[t+1]
    dy[t] = Delta[t] + R_z.T @ dz_bar[t+1] + ...
    dW_z[t] = outer(dz_bar[t], x[t])        # per-step terms: dW_z = sum over t, batch
    dp_i[t] = c[t-1]*di_bar[t]
    dc0 = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]     # right side at step t = 0

A matrix product that is a factor of a product, or is negated alone, is parenthesized
(``-(R_z.T @ v)``, ``a*(W @ v)``); its argument is parenthesized unless it is a
single name or a call.

LaTeX notation (exactly these forms are printed; `derive.verification.latex` parses them):

==========================  ================================================
forward value               ``x^{(t)}``, ``c^{(t-1)}``, ``f^{(t+1)}``
node ``o_bar``              ``\bar{o}^{(t)}``; ``gate_bar`` → ``\bar{\mathit{gate}}``
multi-letter name           ``\mathit{name}`` (``_`` written ``\_``)
delta                       ``\delta c^{(t)}`` (a space before a letter),
                            ``\delta\bar{i}^{(t+1)}``, ``\delta\mathit{name}^{(t)}``
external gradient           ``\Delta^{(t)}``; with several outputs ``\Delta_{y}^{(t)}``
parameter                   ``W_{z}``, ``R_{ii}``, ``p_{i}``, ``b_{hr}``, ``W``
                            (head before the first ``_``, rest in ``_{...}``)
matrix product              ``W_{z} x^{(t)}``; transposed ``R_{z}^{\top} \delta\bar{z}^{(t+1)}``
                            (juxtaposition, one space); an argument that is not a
                            single symbol in ``\left(...\right)``; a matrix product
                            that is one factor among others of ``\odot`` in
                            ``\left(...\right)``
element-wise product        `` \odot `` between factors
number times vector         juxtaposition: ``2 x^{(t)}``
sum                         `` + `` and `` - ``; leading ``-``
parentheses                 ``\left(...\right)`` (no inner spaces)
division                    ``\frac{num}{den}`` (both ``\odot`` products)
power                       ``^{2}`` after the atom: ``\tanh\left(c^{(t)}\right)^{2}``,
                            ``p_{i}^{2}``; a time-indexed base is wrapped:
                            ``\left(z^{(t)}\right)^{2}``
functions                   ``\sigma\left(...\right)``, ``\tanh\left(...\right)``,
                            ``\exp\left(...\right)``, ``\log\left(...\right)``,
                            ``\operatorname{relu}\left(...\right)``,
                            ``\operatorname{softplus}\left(...\right)``, ``\sqrt{...}``
relu' from its output h     the Iverson bracket ``\left[h^{(t)} > 0\right]``
reduction                   ``\operatorname{mean}\left(...\right)`` (over the hidden
                            units of a row, broadcast back)
outer product               ``\left\langle a, b \right\rangle`` (a bᵀ)
==========================  ================================================

Equations: ``\delta c^{(t)} = ...``; per-step parameter terms
``\delta W_{z}^{(t)} = \left\langle \delta\bar{z}^{(t)}, x^{(t)} \right\rangle``;
initial-state gradients ``\delta c_{0} = ...`` with the right side at step t (= 0),
like the text notation. `equations(d, "latex")` prints one equation a line, ``%``
comments. The documents print the initial-state gradients and the t = 0 boundary
terms of the parameter gradients at numeric steps (``^{(0)}``, ``^{(-1)}``), and break
long equations into rows of an ``aligned`` environment (`latex_rows`): a parenthesized
sum or matrix argument split over rows is written ``\bigl(`` ... ``\bigr)``.
"""
