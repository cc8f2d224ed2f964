"""benchmarks.run_all rewrites only the sections it ran: hand-measured sections of BENCHMARKS.md survive."""

from __future__ import annotations

from benchmarks.run_all import _read_sections


def test_a_hand_written_section_after_a_bench_section_is_its_own(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n<!-- bench_synthetic -->\n## Synthetic\n| a |\n\n"
                    "<!-- end_to_end (by hand) -->\n## End to end\n| make stage1 | 8 min |\n")
    sections = _read_sections(path)
    assert sections == {"bench_synthetic": "## Synthetic\n| a |",
                        "end_to_end (by hand)": "## End to end\n| make stage1 | 8 min |"}
