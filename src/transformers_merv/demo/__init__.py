"""`merv demo`: a local web app (Gradio) to ask questions about a video and see which encoders the model relied on.

The modules below `app` import no Gradio, so the page's logic runs (and is tested) without it: `sources` (the video
and clip window a request names), `backends` (answers from the Python model or from a running `merv serve`),
`openai_client` (that server's chat completions, streamed), `views` (the HTML the page shows), `callbacks` (what each
button does). `app` builds the Gradio page from them; only `merv demo` imports it.
"""

INSTALL_HINT = "pip install 'transformers-merv[demo]'"
"""How to install what `merv demo` needs beyond the package (Gradio)."""
