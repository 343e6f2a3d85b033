"""The studio's page: Gradio components wired to `serving.studio.StudioActions`.

Every element a user (or the browser test) looks for has an `elem_id`: `panel` (the image
editor: upload, then brush), `mask`, `reference`, `face`, `face-note`, `prompt`, `negative`,
`paint`, `status`, `result`, `pose`, `summary`, `download`, `characters`, `number`, `rerun`,
`move-up`, `remove`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.studio import (
    BRUSH_COLOUR,
    FIXED_PARAMS,
    Session,
    Studio,
    StudioActions,
    character_rows,
    describe_reference,
    error_line,
    log,
)

TABLE_HEADERS = ["#", "prompt", "identity when painted", "identity on the final panel", "note"]
INTRO = (
    "Upload a panel, brush where the character goes (or upload a mask), pick the character's "
    "reference, say what it does, and paint. The result is the canvas for the next character."
)


def param_control(gr: Any, name: str, spec: Mapping[str, Any]) -> Any:
    """A control for one inference param, with the model's default and range."""
    label = name.replace("_", " ")
    default = spec["default"]
    if spec.get("choices") is not None:
        return gr.Dropdown(list(spec["choices"]), value=default, label=label, elem_id=name)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, elem_id=name)
    if name == "seed" or spec.get("min") is None or spec.get("max") is None:
        return gr.Number(value=default, label=label, precision=0, elem_id=name)
    step = 1 if isinstance(default, int) else 0.05
    return gr.Slider(spec["min"], spec["max"], value=default, step=step, label=label, elem_id=name)


def build_page(studio: Studio) -> Any:
    """The studio as a `gr.Blocks`."""
    import gradio as gr

    actions = StudioActions(studio)
    names = [name for name in studio.params if name not in FIXED_PARAMS]

    with gr.Blocks(title="cameo studio", analytics_enabled=False) as page:
        gr.Markdown(f"# cameo studio\nPainting with **{studio.model_version}** ({studio.where}).")
        gr.Markdown(INTRO)
        session = gr.State(Session())
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(
                    label="Panel: upload it, then brush where the character goes",
                    type="pil",
                    image_mode="RGBA",
                    format="png",
                    sources=["upload", "clipboard"],
                    brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed", default_size=24),
                    transforms=(),
                    layers=False,
                    elem_id="panel",
                )
                # Files, not gr.Image: an upload whose bytes are no image gets cameo's one
                # line (Gradio's image preprocessing would fail the event before it).
                mask = gr.File(
                    label="Or upload a mask (white = paint here)",
                    file_types=["image"],
                    type="filepath",
                    height=80,
                    elem_id="mask",
                )
            with gr.Column(scale=2):
                reference = gr.File(
                    label="Character reference",
                    file_types=["image"],
                    type="filepath",
                    height=80,
                    elem_id="reference",
                )
                face = gr.Image(
                    label="The reference, its face found",
                    interactive=False,
                    height=240,
                    elem_id="face",
                )
                face_note = gr.Markdown(elem_id="face-note")
                prompt = gr.Textbox(
                    label="Prompt: who the character is and what it does", elem_id="prompt"
                )
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                with gr.Accordion("Settings (the model's defaults)", open=False):
                    controls = [param_control(gr, n, studio.params[n]) for n in names]
                paint = gr.Button("Paint this character", variant="primary", elem_id="paint")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            result = gr.Image(
                label="Result", type="pil", format="png", interactive=False, elem_id="result"
            )
            pose = gr.Image(
                label="Pose that conditioned the last character", interactive=False, elem_id="pose"
            )
        summary = gr.Markdown(elem_id="summary")
        download = gr.File(
            height=80, label="Download the panel (PNG, with how it was made)", elem_id="download"
        )
        table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="characters")
        with gr.Row():
            number = gr.Number(label="Character #", value=1, precision=0, elem_id="number")
            rerun = gr.Button("Re-run with the settings shown", elem_id="rerun")
            move_up = gr.Button("Paint it one earlier", elem_id="move-up")
            remove = gr.Button("Remove", elem_id="remove")

        outputs = [session, editor, result, pose, summary, table, download, status]
        tracked = gr.Progress()  # the handlers' default: Gradio then reports their progress

        def shown(new_session: Session, panel) -> list[Any]:
            image = new_session.image
            last = panel.characters[-1].result if panel is not None else None
            return [
                new_session,
                {"background": image, "layers": [], "composite": image},
                image,
                last.pose if last is not None else None,
                actions.summary(panel),
                character_rows(panel, new_session),
                str(actions.saved(panel)) if panel is not None else None,
                "",
            ]

        def run(action, *args, progress: Any) -> list[Any]:
            def step(i: int, n: int) -> None:
                progress((i, n), desc=f"painting character {i + 1} of {n}")

            try:
                return shown(*action(*args, progress=step))
            except Exception as error:  # the page says it in one line and stays usable
                log.warning("painting failed", exc_info=error)  # the traceback: the log
                line = error_line(error, studio.where)
                return [gr.skip()] * (len(outputs) - 1) + [f"**{line}**"]

        def on_paint(state, edited, uploaded, ref, text, neg, *values, progress=tracked):
            settings = dict(zip(names, values, strict=True))
            return run(
                actions.add_character,
                state,
                edited,
                uploaded,
                ref,
                text,
                neg,
                settings,
                progress=progress,
            )

        def on_rerun(state, which, *values, progress=tracked):
            settings = dict(zip(names, values, strict=True))
            return run(actions.rerun, state, which, settings, progress=progress)

        def on_move_up(state, which, progress=tracked):
            return run(actions.move_up, state, which, progress=progress)

        def on_remove(state, which, progress=tracked):
            return run(actions.remove, state, which, progress=progress)

        reference.change(
            lambda image: describe_reference(studio.priors, image),
            inputs=reference,
            outputs=[face, face_note],
        )
        paint.click(
            on_paint, [session, editor, mask, reference, prompt, negative, *controls], outputs
        )
        rerun.click(on_rerun, [session, number, *controls], outputs)
        move_up.click(on_move_up, [session, number], outputs)
        remove.click(on_remove, [session, number], outputs)
    return page
