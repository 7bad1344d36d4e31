"""Dataset builders: they write a dataset folder in the FSDKaggle2019 layout, and are not stages.

    python -m pipeline.datasets.demo --out data/demo        # make demo-data: the embedded synthetic demo set
    python -m pipeline.datasets.real --out data/real        # make real-data: the real-sound set from Debian packages

demo.py renders the demo set; real.py mixes the real-sound set from the recordings that real_sources.py fetches,
checks and decodes (its class map: real_classes.csv; the game archives it opens: unpack_games.py). The stages of
`make features train infer` read a dataset folder and never import this package (tests/test_imports.py checks it).
"""
