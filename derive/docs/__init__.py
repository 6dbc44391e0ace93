"""Stage 4a — documents: the derived equations as `derive equations` prints them, the
LaTeX layout of long equations, and the LaTeX and Markdown documents of a cell."""
