"""Convert a CTranslate2 (faster-whisper) Whisper model into a transformers model folder.

Example:
    python tools/import_ct2.py --ct2_dir faster-whisper-small --output_dir models/whisper-small

The output loads with ``WhisperForConditionalGeneration.from_pretrained`` and
``WhisperProcessor.from_pretrained`` and can be fine-tuned like any hub checkpoint.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # run as `python tools/import_ct2.py` from anywhere
    sys.path.insert(0, str(_REPO_ROOT))

from utils.cli import add_bool, make_parser, setup_logging  # noqa: E402
from utils.ct2_format import CT2FormatError  # noqa: E402
from utils.ct2_import import convert_ct2_to_hf  # noqa: E402

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--ct2_dir", type=str, required=True,
                        help="CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json)")
    parser.add_argument("--output_dir", type=str, required=True, help="transformers model folder to create")
    parser.add_argument("--dtype", type=str, default="float32", choices=["float32", "float16", "bfloat16"],
                        help="dtype of the saved weights")
    add_bool(parser, "overwrite", False, "replace output_dir if it exists")
    args = parser.parse_args(argv)
    setup_logging()

    try:
        output = convert_ct2_to_hf(args.ct2_dir, args.output_dir, dtype=args.dtype, overwrite=args.overwrite)
    except (CT2FormatError, FileNotFoundError, FileExistsError) as e:
        logger.error("%s", e)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
