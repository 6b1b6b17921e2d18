"""site, a static-site generator in C whose pages are rendered by memoized
calls: one build step for the whole site, and still incremental per page.

Two programs are built by clang running inside WebAssembly. `render.wasm`
(src/render.c) is a reactor: it has no main, and its exported function
`render` turns one page of a small Markdown subset (headings, paragraphs,
emphasis, inline code, bullet lists, links) into an HTML fragment and the
page's title. `sitegen.wasm` (src/sitegen.c) is a command: it reads
pages/*.md in name order, calls `render` of /render.wasm on each page
through `kiln_call_begin`/`kiln_call_end` from kiln.h (`c.guest_header()`),
and writes site/NAME.html for every page and site/index.html listing their
titles.

`kiln build site` runs sitegen as one wasm step, with the pages folder
(pages/*.md) and render.wasm as its inputs and the `site` folder as its
output, placed in kiln-out/site/. Each render call is keyed by the module, the export and the
page's text, and memoized in the store's action cache like a step. Edit one
page and build again: the sitegen step runs again (one of its inputs
changed), but only that page's render call runs; every other page's call is
answered from the cache (`kiln show site` lists each call, ran or cached).
Build once more without a change and nothing runs at all.
"""

from kiln.build import c, gather, glob, source, target, wasm

CFLAGS = ["-O2", "-Wall", "-Wextra"]


@target
async def render():
    """render.wasm: a reactor exporting `render` (Markdown in, HTML out)."""
    return await c.program(
        "render", [source("src/render.c")], headers=[c.guest_header()], cflags=CFLAGS,
        exports=["render"],
    )  # fmt: skip


@target
async def sitegen():
    """sitegen.wasm: a command that renders every page by calling render.wasm."""
    return await c.program(
        "sitegen", [source("src/sitegen.c")], headers=[c.guest_header()], cflags=CFLAGS
    )


@target
async def site():
    """The site: one HTML file per page, and index.html."""
    generator, renderer = await gather(sitegen(), render())
    # The pages keep their paths (pages/NAME.md); render.wasm is at the root.
    step = await wasm(
        generator, "pages", "site", inputs=[renderer, *glob("pages/*.md")],
        outputs=["site"], description="sitegen",
    )  # fmt: skip
    return step.tree("site").at("")
