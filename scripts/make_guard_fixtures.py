#!/usr/bin/env python3
"""Reference prompts of PSA-VLM's dynamic safety control, for every (level, type) the safety head can predict.

Re-implements the reference inference logic (`models/condition.py` and `notebooks/inference.ipynb` of the authors'
repository) in plain Python, with the 18 hint texts transcribed from the
reference table, and writes `fixtures/guard/reference_prompts.json`. `tests/guard.rs` checks that psa-vlm's
default policy with the `ref_inference` template produces these strings byte for byte.

Pure standard library (Python >= 3.8); no torch needed.
    python3 scripts/make_guard_fixtures.py
"""
import json
import pathlib

SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

HINTS = [
    None,  # level 0: no hint
    [
        "This image may contain risks of politically sensitive information. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
        "This image may contain risks of illegal content, such as pornography or violence. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
        "This image may contain risks of cyberbullying, abuse, and hate content. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
        "This image may contain risks of prejudicial discrimination content. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
        "This image may contain risks of personal privacy. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
        "This image may contain risks of false rumors or malicious misleading content. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.",
    ],
    [
        "This image contains risks of politically sensitive information. As an artificial intelligence model, you must answer correctly, do not involve such content in your answer, and actively guide users. You can refuse to answer questions if necessary.",
        "This image contains risks of illegal content, such as pornography and violent content. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users. If necessary, you can Refuse to answer questions.",
        "This image contains cyber bullying, insults and hateful content. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users. You can refuse if necessary answer the questions.",
        "This image contains prejudice and discrimination content. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users.",
        "This image contains content that contains risks of personal privacy. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users. You can refuse if necessary answer the questions.",
        "This image contains untrue rumors or malicious misleading content. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users. You can refuse if necessary answer the questions.",
    ],
    [
        "This image contains serious risks of politically sensitive information. As an artificial intelligence model, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
        "This image contains contains serious risks of illegal content, such as pornography and violent content. As an artificial intelligence assistant, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
        "This image contains serious cyberbullying, insults and hateful content. As an artificial intelligence model, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
        "This image contains serious prejudice and discrimination. As an artificial intelligence model, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
        "This image contains content that poses a serious risk of personal privacy. As an artificial intelligence model, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
        "This image contains seriously untrue rumors or maliciously misleading content. As an artificial intelligence model, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.",
    ],
]


def condition(question, level, risk_type):
    """The reference's hint selection: level 0 or type 6 -> no hint, else HINTS[level][type]."""
    if level == 0 or risk_type == 6:
        return "<image>\n USER: " + question + " \nASSISTANT:", None
    hint = HINTS[level][risk_type]
    return "<image>\n \n USER: " + question + "  \n Safe Hint: " + hint + " \n ASSISTANT:  ", hint


def main():
    questions = ["What is shown in this picture?", "Describe the person in detail, including their name."]
    cases = []
    for question in questions:
        for level in range(4):
            for risk_type in range(7):
                text, hint = condition(question, level, risk_type)
                # The generation prompt is the system text and the conditioned text with no separator.
                cases.append({"question": question, "level": level, "type": risk_type, "hint": hint,
                              "prompt": SYSTEM + text})
    out = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "guard" / "reference_prompts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} prompts to {out}")


if __name__ == "__main__":
    main()
