"""Generate the small English "general" sets in ``dataset/general/`` (espeak-ng), for the forgetting report.

    python tools/make_general_data.py --output_dir dataset/general

Two sets of different sentences: ``general_en.json`` (scored by the forgetting report) and ``replay_en.json``
(for ``finetune.py --replay_data``: general data mixed into training must not be the data it is judged on).

A fine-tuned model can lose what it knew outside the fine-tuning data: other languages, numbers,
punctuation. ``evaluation.py --compare BASE FINETUNED`` scores both models on this set (and on any
``--general_data`` manifest) next to the target test set. The sentences are original text with numbers,
names and punctuation; each is spoken by espeak-ng's en-us voice at a speed and pitch drawn from a seeded RNG.
Written: ``en_NNNN.flac`` / ``replay_NNNN.flac`` (16 kHz mono 16-bit) and the two jsonlines manifests
(language English).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.make_demo_data import EN_VOICE, Voice, check_tools, synthesize_speech  # noqa: E402
from utils.audio import SAMPLE_RATE  # noqa: E402
from utils.io import write_jsonlines_atomic  # noqa: E402

SENTENCES = (
    "The train to Boston leaves at half past seven.",
    "Please call me back before Friday afternoon.",
    "We sold twelve tickets for the concert on Sunday.",
    "My sister lives in a small town near the sea.",
    "The library opens at nine and closes at five.",
    "He bought three apples, two oranges and a melon.",
    "Could you send the report to the finance team?",
    "The meeting was moved to the second floor.",
    "It rained all night, but the morning was clear.",
    "Turn left at the bank and walk for two minutes.",
    "Our flight was delayed by almost an hour.",
    "She has been learning the piano for six years.",
    "The price of coffee went up again this month.",
    "Remember to water the plants while I am away.",
    "The children played football in the park until dark.",
    "Thank you for your help with the new project.",
)
REPLAY_SENTENCES = (
    "The bus stop is just across the street from the bakery.",
    "I will be back in about twenty minutes.",
    "They painted the kitchen yellow last summer.",
    "Our team won the match by four goals to one.",
    "Please keep the door closed when the heating is on.",
    "The doctor said I should drink more water.",
    "We are planning a trip to the mountains in May.",
    "His new phone cost more than eight hundred dollars.",
    "The museum is free on the first Monday of the month.",
    "Can you pick up some bread on your way home?",
    "The river flooded after three days of heavy rain.",
    "She wrote a letter to her grandmother in Canada.",
    "The printer on the third floor is out of paper.",
    "Dinner will be ready at a quarter to eight.",
    "He forgot his umbrella at the restaurant again.",
    "The new bridge will open to traffic next week.",
)
SPEED_RANGE = (150, 185)
PITCH_RANGE = (35, 65)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("dataset/general"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    check_tools()
    rng = random.Random(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for manifest, prefix, sentences in (("general_en.json", "en", SENTENCES),
                                        ("replay_en.json", "replay", REPLAY_SENTENCES)):
        records = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, text in enumerate(sentences, start=1):
                voice = Voice(EN_VOICE, speed=rng.randint(*SPEED_RANGE), pitch=rng.randint(*PITCH_RANGE),
                              amplitude=100)
                samples = synthesize_speech(text, voice, Path(tmp))
                name = f"{prefix}_{i:04d}.flac"
                sf.write(args.output_dir / name, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                records.append({"audio": {"path": name}, "sentence": text, "language": "English",
                                "duration": round(len(samples) / SAMPLE_RATE, 2)})
        write_jsonlines_atomic(args.output_dir / manifest, records)
        print(f"{len(records)} clips: {args.output_dir / manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
