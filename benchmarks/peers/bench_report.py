"""Derived columns, the console table and the Markdown table of the peer benchmark."""

from __future__ import annotations

from typing import Any

COLUMNS = ("model", "batch", "peer", "samples/s", "vs jdl", "% peak", "% peak 3xfwd",
           "compile s", "1st epoch s", "RSS MiB", "other cores", "note")
# Cores' worth of CPU that other processes may use during a run before its figures
# are marked (``*``) as measured on a busy machine.
LOAD_LIMIT = 0.1
LOAD_FOOTNOTE = (f"* other cores above {LOAD_LIMIT}: other processes used that much CPU "
                 "during the run (a peer's or a matmul's), which slows the peers unequally; "
                 "its figures are not comparable (re-run on a quiet machine)")


def loaded(run: dict[str, Any]) -> bool:
  """Whether other processes used more than :data:`LOAD_LIMIT` cores during ``run``."""
  return float(run.get("other_cores") or 0.0) > LOAD_LIMIT


def add_derived(rows: list[dict[str, Any]], flops: dict[str, float],
                peak_gflops: float | None,
                flops_3x: dict[str, float] | None = None) -> None:
  """Adds ``ratio_to_jdl``, ``pct_matmul_peak`` and ``compile_est_s`` to the rows, in place.

  Args:
    rows: one dict per run, with ``model``, ``peer``, ``status`` and, for runs that
      finished, ``samples_per_s``, ``first_epoch_s`` and ``compile_s`` (``None``
      where compilation happens inside the first epoch).
    flops: training FLOPs per example, by model.
    peak_gflops: the JAX matmul GFLOP/s that ``pct_matmul_peak`` divides by.
    flops_3x: 3x XLA's forward count per example, by model (``pct_matmul_peak_3x``).
      The issue's convention is 3x an analytic forward count: the same for the MLP,
      ~6% more for the CNN (27.9 M against XLA's 26.1 M: XLA skips the taps on the
      zero padding). XLA's count of the training step is lower still (no input
      gradient for the first layer, elementwise work counted as it runs), so its
      percentage is the conservative one.
  """
  jdl = {(r["model"], r["batch"]): r["samples_per_s"] for r in rows
         if r["peer"] == "jdl" and r["status"] == "ok"}
  for r in rows:
    if r["status"] != "ok":
      continue
    rate = r["samples_per_s"]
    key = (r["model"], r["batch"])
    r["ratio_to_jdl"] = rate / jdl[key] if key in jdl else None
    f = flops.get(r["model"])
    r["pct_matmul_peak"] = (100.0 * rate * f / (peak_gflops * 1e9)
                            if f and peak_gflops else None)
    f3 = (flops_3x or {}).get(r["model"])
    r["pct_matmul_peak_3x"] = (100.0 * rate * f3 / (peak_gflops * 1e9)
                               if f3 and peak_gflops else None)
    if r.get("compile_s") is None:
      # Compiled inside the first epoch: what that epoch took beyond a steady one.
      steady_epoch = r["samples_per_epoch"] / rate
      r["compile_est_s"] = max(r["first_epoch_s"] - steady_epoch, 0.0)


def _num(value: float | None, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def cells(row: dict[str, Any]) -> list[str]:
  """The table cells of one row."""
  head = [row["model"], str(row["batch"]), row["peer"]]
  if row["status"] != "ok":
    return head + ["-"] * (len(COLUMNS) - 4) + [row["status"]]
  if row.get("compile_s") is not None:
    compile_s = f"{row['compile_s']:.1f}"
  else:
    compile_s = "~" + f"{row['compile_est_s']:.1f}"
  ratio = row.get("ratio_to_jdl")
  pct = row.get("pct_matmul_peak")
  pct3 = row.get("pct_matmul_peak_3x")
  return head + [
      f"{row['samples_per_s']:,.0f}",
      _num(ratio, ".2f"),
      "-" if pct is None else f"{pct:.1f}%",
      "-" if pct3 is None else f"{pct3:.1f}%",
      compile_s,
      f"{row['first_epoch_s']:.1f}",
      f"{row['peak_rss_mib']:,.0f}",
      f"{row['other_cores']:.2f}" + ("*" if loaded(row) else ""),
      row.get("note", ""),
  ]


def console_table(rows: list[dict[str, Any]]) -> str:
  """A fixed-width table; numbers right-aligned."""
  table = [list(COLUMNS)] + [cells(r) for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
  lines = []
  for line in table:
    out = []
    for i, cell in enumerate(line[:-1]):
      out.append(cell.ljust(widths[i]) if i in (0, 2) else cell.rjust(widths[i]))
    lines.append("  ".join(out) + "  " + line[-1])
  return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """A GitHub-flavoured Markdown table of the rows."""
  align = ["---", "---:", "---"] + ["---:"] * (len(COLUMNS) - 4) + ["---"]
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(c.replace("|", "/").replace("*", "\\*")
                                   for c in cells(r)) + " |")
  return "\n".join(lines)


def check_params(rows: list[dict[str, Any]]) -> list[str]:
  """One line per model: its parameter count, or the disagreement between peers."""
  lines = []
  for model in dict.fromkeys(r["model"] for r in rows):
    counts = {r["peer"]: r["params"] for r in rows
              if r["model"] == model and r["status"] == "ok" and "params" in r}
    if len(set(counts.values())) == 1:
      lines.append(f"parameters: {model} {next(iter(counts.values())):,} in every "
                   f"peer that ran ({len(counts)})")
    elif counts:
      lines.append(f"PARAMETER COUNT MISMATCH for {model}: " + ", ".join(
          f"{peer} {n:,}" for peer, n in counts.items()))
  return lines
