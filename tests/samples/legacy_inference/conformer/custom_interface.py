"""Entry point for speechbrain.inference.interfaces.foreign_class:
foreign_class(source=<this folder>, pymodule_file="custom_interface.py",
classname="AudioClassifier"). Needs the speechbrain_petl package installed."""

from speechbrain_petl.inference import AudioClassifier  # noqa: F401
