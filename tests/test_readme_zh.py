"""README.zh-CN.md says what README.md says where it matters: the same commands, the same formulas,
and the same sections in the same order, each with the same code, links and pictures."""
import collections
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


FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)


def sections(text):
    """``[(level, heading, body)]``: the document cut at its Markdown headings (none inside code)."""
    out, level, heading, start = [], 0, "(before the first heading)", 0
    fenced = [m.span() for m in FENCE.finditer(text)]
    for m in re.finditer(r"^(#{1,6}) (.+)$", text, re.M):
        if any(a <= m.start() < b for a, b in fenced):
            continue  # a comment line in a code block, not a heading
        out.append((level, heading, text[start:m.start()]))
        level, heading, start = len(m.group(1)), m.group(2).strip(), m.end()
    out.append((level, heading, text[start:]))
    return out


def contents(body):
    """What a section must hold in both languages: its code blocks (language; commands, code
    without comments, program output), the files and pages it links and the pictures it shows."""
    code = []
    for lang, block in FENCE.findall(body):
        if lang == "bash":
            code.append(("bash", tuple(commands(f"```bash\n{block}```"))))
        elif lang == "python":  # the code itself; comments may speak either language
            code.append(("python", tuple(ln for ln in (re.sub(r"\s*#\s.*$", "", line).rstrip()
                                                       for line in block.splitlines()) if ln.strip())))
        elif re.search(r"^(\$ |starting run)", block, re.M):  # a transcript: the program's words
            code.append(("output", block))
        else:
            code.append((lang or "text", None))  # a sketch (a file tree): may be written in either
    prose = FENCE.sub("", body)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", prose)
    links = collections.Counter(t for t in re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", prose)
                                if not t.startswith("#")  # anchors differ: their headings are translated
                                and t not in ("README.md", "README.zh-CN.md"))  # each links the other
    return {"code blocks": code, "pictures": images, "links": links}


def anchors(text):
    """GitHub's anchors of a document's headings."""
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for _, h, _ in sections(text)[1:]}


def test_the_sections_are_the_same_at_the_same_levels_in_the_same_order():
    en, zh = sections(EN), sections(ZH)
    assert len(en) >= 20
    en_levels = [(level, heading) for level, heading, _ in en]
    zh_levels = [(level, heading) for level, heading, _ in zh]
    for i, ((le, he), (lz, hz)) in enumerate(zip(en_levels, zh_levels)):
        assert le == lz, (f"section {i}: README.md has {'#' * le} {he!r} where README.zh-CN.md has "
                          f"{'#' * lz} {hz!r}: the same headings, at the same levels, in the same order")
    if len(en) != len(zh):  # name where they part: the first section whose level or contents differ
        first = next((i for i, (a, b) in enumerate(zip(en, zh))
                      if a[0] != b[0] or contents(a[2]) != contents(b[2])), min(len(en), len(zh)))
        heading = lambda secs: repr(secs[first][1]) if first < len(secs) else "(nothing)"
        raise AssertionError(f"README.md has {len(en)} sections, README.zh-CN.md {len(zh)}: they part at section "
                             f"{first}, README.md's {heading(en)} against README.zh-CN.md's {heading(zh)}; "
                             "a section added to one README must be added to the other")


def test_each_section_holds_the_same_code_links_and_pictures():
    for (_, he, en_body), (_, hz, zh_body) in zip(sections(EN), sections(ZH)):
        en, zh = contents(en_body), contents(zh_body)
        for what in en:
            assert zh[what] == en[what], (f"section {he!r} (README.zh-CN.md: {hz!r}): its {what} differ\n"
                                          f"README.md:       {en[what]!r}\nREADME.zh-CN.md: {zh[what]!r}")


def test_every_section_link_leads_to_a_heading_of_its_own_readme():
    for text, name in ((EN, "README.md"), (ZH, "README.zh-CN.md")):
        targets = set(re.findall(r"\]\(#([^)]+)\)", text))
        missing = sorted(targets - anchors(text))
        assert not missing, f"{name} links to sections it does not have: {missing}"
