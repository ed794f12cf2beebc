"""README.zh-CN.md says what README.md says where it matters: the same commands, the same formulas."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
EN = (ROOT / "README.md").read_text(encoding="utf-8")
ZH = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")


def commands(text):
    """Every command line of the ```bash blocks (comments dropped) and every ``$ `` line of transcripts."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", line).rstrip()
            if cmd.strip():
                out.append(cmd)
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        out += [line.rstrip() for line in block.splitlines() if line.startswith("$ ")]
    return out


def table_rows(text):
    """``{code links: code spans}`` for each row of the blocks table."""
    section = re.search(r"\n\| (block|积木) \|.*?\n\n", text, re.S).group(0)
    rows = {}
    for line in section.strip().splitlines()[2:]:
        links = tuple(re.findall(r"\]\(([^)]+)\)", line))
        rows.setdefault(links, []).append(re.findall(r"`([^`]+)`", line))
    return rows


def test_the_commands_are_identical():
    en, zh = commands(EN), commands(ZH)
    assert len(en) >= 12 and any(c.startswith("jimunet serve") for c in en)
    assert zh == en


def test_the_blocks_table_has_the_same_rows_formulas_and_code():
    en, zh = table_rows(EN), table_rows(ZH)
    assert len(sum(en.values(), [])) >= 12  # every block, Conv2D once per algorithm
    assert zh == en


def test_each_links_the_other_and_both_show_the_screenshots():
    assert "(README.zh-CN.md)" in EN and "(README.md)" in ZH
    for image in ("docs/serve.png", "docs/report-example.png"):
        assert f"]({image})" in EN and f"]({image})" in ZH
        data = (ROOT / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
