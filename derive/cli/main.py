"""Stage 9 — the command line: `derive …` subcommands, thin over the stages.

Exit codes: 0 success; 1 a check or verification that ran and failed; 2 bad input
(one line on stderr, no traceback). `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from derive.errors import UserError

EPILOG = """\
CELL is a shipped cell name (see `derive cells`) or a path to a .toml cell spec.
Exit codes: 0 success, 1 a check or verification failed, 2 bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: exit 2 with one line, like UserError
        self.print_usage(sys.stderr)
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="derive", formatter_class=fmt, epilog=EPILOG,
        description=textwrap.dedent("""\
            Derive the back-propagation equations of recurrent cells with SymPy, write them
            as LaTeX and Markdown, and compile them into checked Cython kernels.

            With no command: derive the default cell (lstm), write its documents and kernel
            into generated/, build the kernel, gradient-check it and print a summary."""))
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("cells", help="list the shipped cells", formatter_class=fmt,
                       description=textwrap.dedent("""\
            List the shipped cells with their titles.

            A cell file (any CELL can be a path to one) writes one step as named nodes:
            `W @ x + R @ y[t-1] + b` (matrix products of a named vector, top-level terms),
            + - * / ** element-wise, the functions sigmoid tanh exp log relu softplus sqrt,
            and the reduction mean(v): the mean of v over the N hidden units of each batch
            row, broadcast back to every unit (equations, documents, verify and the
            derivation's check; compiled kernels do not support it yet)."""))
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("equations", help="print the derived backward equations of a cell",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Print the derived backward pass of CELL: for every kept node its structured
            equation (in terms of the consumers' deltas, as the paper writes it), the
            parameter gradients and the initial-state gradients.
            --expanded prints the expanded forms (forward values and incoming gradients
            only) and the flows.

            example: derive equations lstm --format latex"""))
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--format", choices=["text", "latex", "markdown", "json"], default="text",
                   help="output format (default: text, the notation `derive verify` reads)")
    p.add_argument("--expanded", action="store_true",
                   help="also print the expanded forms and the flows")

    p = sub.add_parser("generate", help="write documents and kernels into generated/",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Regenerate generated/<cell>/ (equations.tex, equations.md, kernel sources) and
            generated/README.md for the given cells (default: every shipped cell).
            Output is deterministic. With --check nothing is written: exit 1 if the
            files on disk differ from what would be generated (stale)."""))
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: generated/ of this checkout)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the output folder is stale")

    p = sub.add_parser("plan", help="print the kernel plan of a cell", formatter_class=fmt,
                       epilog=EPILOG,
                       description="Print the stage between derivation and code: the "
                                   "operands, the arrays of a kernel call and the forward "
                                   "and backward step programs with their CSE temporaries.")
    p.add_argument("cell", metavar="CELL")

    p = sub.add_parser("build", help="compile the kernel of a cell (cached)",
                       formatter_class=fmt, epilog=EPILOG,
                       description="Compile CELL's Cython kernel into the cache (or confirm "
                                   "the cached build) and print where it is.")
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")

    p = sub.add_parser("check", help="finite-difference check of the compiled kernel",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Check every gradient of CELL's kernel (or of the NumPy reference kernel, or
            of the derivation itself) against float64 central differences of its forward
            pass (random output projection as the loss, T >= 3, batch >= 2, M != N,
            non-zero initial state). Prints the maximum relative error per gradient;
            exit 1 when any is over the tolerance."""))
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="kernel dtype to check (float32 is compared with the float64 "
                        "kernel within float32 rounding)")
    p.add_argument("--backend", choices=["cython", "numpy", "derivation"], default="cython",
                   help="what to differentiate: the compiled kernel (default), the NumPy "
                        "reference kernel, or the derived equations evaluated step by step "
                        "on the unrolled sequence")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("verify", help="check hand-derived equations against the derivation",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Verify hand derivations of CELL, one EQUATION an argument (or a line of --file F,
            # starts a comment), in the text notation:

              dc[t]   = dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + ...
              dy[t]   = Delta[t] + R_z.T @ dz_bar[t+1] + ...        (any node or input)
              dp_f[t] = c[t-1]*df_bar[t]     per-step term of a parameter gradient;
              dR_f[t] = outer(df_bar[t+1], y[t])   equal up to a uniform time shift
              dc0     = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]
                        gradient of the initial state, right side at step t = 0

            name[t], name[t+1], name[t-1]: forward values of nodes and inputs; dname[..]:
            their deltas; Delta[t]: the gradient reaching the output from outside;
            parameters without index; * / + - ** element-wise; @ matrix product; .T
            transpose; outer(a, b) = a b^T summed over the batch; sigmoid tanh exp log
            relu softplus sqrt; dsigmoid(f_bar[t]) = f[t]*(1-f[t]), dtanh(c[t]) =
            1-tanh(c[t])**2, drelu(a[t]) = step(h[t]) for h = relu(a) (step(v) = [v > 0]);
            mean(v): the mean over the hidden units of a batch row, broadcast back
            (its adjoint: dv[t] gets mean(dm[t]) from m = mean(v)).
            With --latex: what `derive equations CELL --format latex` prints, or paper
            style (\\delta c^{(t)}, \\sigma'(\\bar{f}^{(t)}), h'(c^{(t)}), \\odot, \\cdot, ^\\top).

            Both sides are brought to a canonical form (deltas expanded to forward values,
            Delta and the gradients carried from later steps), decided symbolically and
            confirmed numerically on random unrolled sequences (real 3x2 and 3x3
            matrices). A wrong equation gets each wrong term by flow, classified, the
            difference and a numeric counterexample. Input is parsed, never evaluated.
            Exit 0 when every equation is equal, 1 when any differs or cannot be
            decided, 2 for bad input."""))
    p.add_argument("cell", metavar="CELL")
    p.add_argument("equations", nargs="*", metavar="EQUATION")
    p.add_argument("--file", metavar="F", help="read equations from F, one a line "
                                               "(# starts a comment)")
    p.add_argument("--latex", action="store_true",
                   help="equations are LaTeX, as `derive equations --format latex` prints")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("graph", help="draw one step's graph and a delta's backward flows",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Draw one step of CELL: the inputs, the states at t-1, every named node (the
            paper's names, bars on pre-activations), the states at t and the loss J.
            Matrix products are thick blue edges labelled with the matrix, element-wise
            operations thin grey ones. With --delta NAME the flows of that delta are drawn
            over it, as in the seed article: one coloured arrow per flow, from the consumer
            whose delta it carries back to NAME, labelled with the term it contributes.
            SVG, PNG and PDF are drawn with matplotlib (deterministic bytes); DOT is
            Graphviz text (Graphviz is not needed to write it).

            example: derive graph lstm --delta c --out flows_c.svg"""))
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--delta", metavar="NAME", help="draw the flows of this delta (a kept "
                                                   "node or an input, e.g. c, y, o_bar, x)")
    p.add_argument("--format", choices=["svg", "png", "pdf", "dot"], default=None,
                   help="picture format (default: from --out's suffix, else svg)")
    p.add_argument("--out", metavar="FILE", help="write the picture to FILE (default: stdout)")

    p = sub.add_parser("jacobian", help="print the derived state-to-state Jacobian",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Print the Jacobian ds[t]/dr[t-1] of one step for every pair of states s, r of
            CELL, as sums of diag(.) and matrix terms, and beside each its transpose, the
            backward map that back-propagation applies (dr[t-1] = sum_s J.T @ ds[t]).
            Numerator layout: J[k, l] = ds_k[t]/dr_l[t-1].

            example: derive jacobian rnn   ->   (dy[t]/dy[t-1]).T = R.T @ diag(1 - y[t]**2)"""))
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--format", choices=["text", "latex", "markdown", "json"], default="text")

    p = sub.add_parser("analyze", help="measure vanishing/exploding gradients on the kernels",
                       formatter_class=fmt, epilog=EPILOG, description=textwrap.dedent("""\
            Run the compiled kernels of the given cells (default: lstm lstm_nfg gru rnn) on
            seeded random sequences with the loss at the last step only, and measure the
            gradient reaching each state k steps earlier, |dL/ds[T-1-k]| for k = 1..T (per
            sequence; the table shows the geometric mean over the batch), and the spectral
            norm of the per-step Jacobian ds[t]/ds[t-1] along the sequence.
            Method: for each k the kernel runs the last k steps from the state the full
            pass reached and returns the gradient of that state (exact); the tests check it
            against the derived Jacobian's backward map on the NumPy reference.
            Parameters: the kernel's init_params (uniform +-1/sqrt(N), seeded) with the
            forget-gate bias b_f shifted by --forget-bias, or --params FILE.npz (arrays named
            like the parameters, or CELL/NAME). A cell with a second node size (lstmp: its
            output y has P entries, its cell state c N) runs with P = --proj-size (default
            N // 2); each state is measured in its own size."""))
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--steps", type=int, default=100, metavar="T", help="sequence length "
                                                                        "(default 100)")
    p.add_argument("--batch", type=int, default=16, metavar="B", help="sequences (default 16)")
    p.add_argument("--hidden", type=int, default=32, metavar="N", help="state size (default 32)")
    p.add_argument("--input", type=int, default=16, metavar="M", help="input size (default 16)")
    p.add_argument("--proj-size", type=int, default=None, metavar="P",
                   help="the second node size P of a cell that has one (lstmp: the size of "
                        "its output y; default N // 2); other cells ignore it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0,
                   help="inputs x ~ scale * N(0, 1) (default 1)")
    p.add_argument("--forget-bias", type=float, default=1.0, metavar="B",
                   help="added to the initial b_f of cells with a forget gate (default 1)")
    p.add_argument("--params", metavar="FILE.npz", help="parameters instead of init_params")
    p.add_argument("--state", action="append", metavar="S",
                   help="measure only this state (repeatable)")
    p.add_argument("--plot", metavar="FILE", help="write the plot (.png, .svg or .pdf)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("bench", help="benchmark kernels against NumPy and PyTorch",
                       formatter_class=fmt, epilog=EPILOG,
                       description="Time forward and forward+backward of the kernels of the "
                                   "given cells (default: lstm_np and lstm) side by side with "
                                   "the NumPy reference, PyTorch (when installed) and the "
                                   "GEMMs alone; medians over repeated runs.")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    return parser


def _version() -> str:
    from derive import __version__
    return f"derive {__version__}"


# --- commands --------------------------------------------------------------------------

def cmd_cells(args) -> int:
    from derive.cell.catalog import shipped_cells
    from derive.cell.spec import load_cell
    cells = [load_cell(n) for n in shipped_cells()]
    if args.json:
        print(json.dumps([{"name": c.name, "title": c.title, "states": list(c.states),
                           "parameters": list(c.parameters)} for c in cells], indent=2))
    else:
        width = max(len(c.name) for c in cells)
        for c in cells:
            print(f"{c.name:<{width}}  {c.title}")
    return 0


def cmd_equations(args) -> int:
    from derive.derivation import derive
    d = derive(args.cell)
    from derive.docs.equations import equations
    sys.stdout.write(equations(d, args.format, expanded=args.expanded))
    return 0


def cmd_generate(args) -> int:
    from derive.generate import generate
    return generate(args.cells or None, out=args.out, check=args.check)


def cmd_plan(args) -> int:
    from derive.kernel.plan import describe, plan
    print(describe(plan(args.cell)), end="")
    return 0


def cmd_build(args) -> int:
    from derive.kernel.build import build
    path = build(args.cell, force=args.force)
    print(path)
    return 0


def cmd_check(args) -> int:
    from derive.check import run_check
    return run_check(args.cell, dtype=args.dtype, backend=args.backend, as_json=args.json)


def cmd_verify(args) -> int:
    from derive.cli.verify import run_verify
    return run_verify(args.cell, args.equations, file=args.file, latex=args.latex,
                      as_json=args.json)


def cmd_bench(args) -> int:
    from derive.bench import run_bench
    return run_bench(args.cells or None, as_json=args.json, quick=args.quick)


def cmd_graph(args) -> int:
    from derive.docs.graph import write_graph
    return write_graph(args.cell, delta=args.delta, fmt=args.format, out=args.out)


def cmd_jacobian(args) -> int:
    from derive.derivation import derive
    from derive.docs.jacobian import jacobian_document
    sys.stdout.write(jacobian_document(derive(args.cell), args.format))
    return 0


def cmd_analyze(args) -> int:
    from derive.analyze import Settings, run_analyze
    settings = Settings(steps=args.steps, batch=args.batch, hidden=args.hidden,
                        input=args.input, seed=args.seed, scale=args.scale,
                        forget_bias=args.forget_bias, proj=args.proj_size)
    return run_analyze(args.cells or None, settings, params=args.params, plot_path=args.plot,
                       as_json=args.json, states=args.state)


def cmd_main(args) -> int:
    from derive.cli.mainjob import main_job
    return main_job()


COMMANDS = {"cells": cmd_cells, "equations": cmd_equations, "generate": cmd_generate,
            "plan": cmd_plan, "build": cmd_build, "check": cmd_check, "verify": cmd_verify,
            "bench": cmd_bench, "graph": cmd_graph, "jacobian": cmd_jacobian,
            "analyze": cmd_analyze,
            None: cmd_main}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # `derive verify CELL --latex EQUATION`: options between equations
            if args.command != "verify" or any(e.startswith("-") for e in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.equations = list(args.equations) + extra
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"derive: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("derive: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
