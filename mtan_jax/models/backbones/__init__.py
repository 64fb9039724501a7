"""The networks the tasks share or each run: the SegNet encoder-decoder of the dense models (the
Decathlon's wide residual network lives with its MTAN in `models/wrn.py`)."""
