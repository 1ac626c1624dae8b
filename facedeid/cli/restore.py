"""``facedeid restore``: undo ``--method password`` with the password (book ch. 6, F⁻¹)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import InvalidInputError, InvalidParameterError

HELP = "give the original faces back to an output of --method password, with its password"

DESCRIPTION = """\
Restore the faces of an image anonymized with `facedeid anonymize --method password`.

Each face of INPUT is redrawn with its identity code turned back by the password's rotation.
The sidecar INPUT.json written beside the output is needed: it holds the per-file salt, the
scrypt parameters, the privacy level and where each face is (never the password, nor anything
that checks it). A wrong password is not reported as wrong: it gives other faces, so an
attacker cannot tell a right guess from a wrong one without knowing the person.

The password comes from --password-file (first line), else the environment variable
--password-env (default FACEDEID_PASSWORD), else a prompt; there is no option to type it on
the command line, where every user of the machine could read it.

Faces the method covered with its pixelate fallback (tiny or profile faces) cannot be restored
and are listed. Images only (video outputs carry no per-face sidecar).

examples:
  facedeid anonymize photo.jpg -o anon/ --method password --param level=mid
  facedeid restore anon/photo.jpg -o restored.jpg
  FACEDEID_PASSWORD=... facedeid restore anon/photo.jpg -o restored/
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("restore", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT", help="an image written by --method password")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="restored image file, or an existing folder to write it into")
    parser.add_argument("--sidecar", metavar="JSON", default=None,
                        help="the sidecar written by anonymize (default: INPUT.json)")
    parser.add_argument("--password-file", metavar="FILE", default="",
                        help="file whose first line is the password")
    parser.add_argument("--password-env", metavar="VAR", default="FACEDEID_PASSWORD",
                        help="environment variable holding the password (default: "
                             "FACEDEID_PASSWORD)")
    parser.add_argument("--checkpoint", default="",
                        help="identity-generator checkpoint (default: the one named in the "
                             "sidecar, else the shipped one)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..io.images import read_image, to_pil, write_image_atomic
    from ..methods.identity_edit import read_password, restore_image

    source = Path(args.input)
    sidecar_path = Path(args.sidecar) if args.sidecar else source.with_name(source.name + ".json")
    target = Path(args.output)
    if target.is_dir():
        target = target / source.name
    protected = {Path(os.path.realpath(path)) for path in (source, sidecar_path)}
    if Path(os.path.realpath(target)) in protected:
        raise InvalidParameterError(f"-o {args.output} is an input of this run; refusing to "
                                    "overwrite it")
    if not target.parent.is_dir():
        raise InvalidParameterError(f"-o {args.output}: the folder {target.parent} does not exist")
    if not sidecar_path.is_file():
        raise InvalidInputError(f"{sidecar_path} not found: restore needs the sidecar that "
                                "`facedeid anonymize --method password` writes beside the output")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"{sidecar_path} is not a readable sidecar ({error})") from None
    loaded = read_image(source)
    password = read_password(args.password_file, args.password_env)
    restored, count, problems = restore_image(loaded.rgb, sidecar, password, args.checkpoint)
    write_image_atomic(target, to_pil(loaded, restored), protected=protected)
    for problem in problems:
        print(f"warning {source}: {problem}", file=sys.stderr)
    print(f"{target}: {count} face(s) redrawn" + (f", {len(problems)} not restorable"
                                                   if problems else ""))
    return 1 if problems and not count else 0
