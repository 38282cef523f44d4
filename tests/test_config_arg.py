"""configs/*.py ':arg' parsing (radimagenet_jax.config_arg)."""
import pytest

from radimagenet_jax import config_arg

KW = dict(variants=("demo", "tiny"), settings=("model",), where="configs/x.py")


def test_variants_and_settings_are_split():
  assert config_arg.parse(" demo, model=densenet121,tiny ", **KW) == (
      {"demo", "tiny"}, {"model": "densenet121"})
  assert config_arg.parse(None, **KW) == (set(), {})


def test_unknown_variant_lists_the_valid_ones():
  with pytest.raises(ValueError,
                     match=r"configs/x.py: unknown variant 'dmeo'.*demo, tiny and model=NAME"):
    config_arg.parse("dmeo", **KW)


def test_unknown_setting_points_to_config_overrides():
  with pytest.raises(ValueError, match=r"unknown setting 'lr'.*--config.lr=0.1"):
    config_arg.parse("demo,lr=0.1", **KW)
