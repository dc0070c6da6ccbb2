"""Parts of a supervised sequence: the part of its example each target token belongs to.

    IGNORE = 0   not supervised: padding, and positions whose next token is in another example
    PROMPT = 1   the prompt (instruction, input text, chat template up to the assistant turn)
    TRACE  = 2   the reasoning trace, `<think>...</think>` included
    ANSWER = 3   the answer (the label text and EOS)

The data layer writes these ids (`data.formats`), the blended chain-of-thought loss reads them
(`losses.BlendedCoT`).
"""

IGNORE, PROMPT, TRACE, ANSWER = 0, 1, 2, 3
