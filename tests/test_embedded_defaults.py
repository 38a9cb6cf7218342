"""`recipe.EMBEDDED_DEFAULTS` (what `recipes/mars_rm.py` runs with no arguments) and the YAML that spells it out,
recipes/minilm/mars/config_embedded.yaml, must say the same thing."""

from __future__ import annotations

from pathlib import Path

import yaml

from trl_mars.cli.recipe import EMBEDDED_DEFAULTS

YAML_PATH = Path(__file__).resolve().parents[1] / "recipes" / "minilm" / "mars" / "config_embedded.yaml"


def test_embedded_defaults_and_their_yaml_agree_key_by_key():
    from_yaml = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))
    differences = []
    for key in sorted(set(EMBEDDED_DEFAULTS) | set(from_yaml)):
        if key not in from_yaml:
            differences.append(f"  {key}: {EMBEDDED_DEFAULTS[key]!r} in EMBEDDED_DEFAULTS, missing from the YAML")
        elif key not in EMBEDDED_DEFAULTS:
            differences.append(f"  {key}: {from_yaml[key]!r} in the YAML, missing from EMBEDDED_DEFAULTS")
        elif (type(from_yaml[key]), from_yaml[key]) != (type(EMBEDDED_DEFAULTS[key]), EMBEDDED_DEFAULTS[key]):
            differences.append(f"  {key}: EMBEDDED_DEFAULTS {EMBEDDED_DEFAULTS[key]!r}, YAML {from_yaml[key]!r}")
    assert not differences, (f"trl_mars/cli/recipe.py EMBEDDED_DEFAULTS and {YAML_PATH.name} differ:\n"
                             + "\n".join(differences) + "\nMake them equal (the recipe's no-argument run is the "
                             "reference).")
