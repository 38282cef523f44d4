"""TFDS builders, one package per data set (`radimagenet-jax build NAME`), found by name by
`radimagenet_jax.data.build.driver`: `radimagenet`, `radimagenet_demo`, `busi`, `ddti`, `mrnet`,
`cc_ccii`, `rsna_ich`, `rsna_pneumonia`, `image_folder`; `common.py` their shared pieces,
`testing_utils.py` and `make_dummy_data.py` their tests' helpers.
"""
