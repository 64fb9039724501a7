"""The dense-prediction experiments (NYUv2, CityScapes: per-pixel tasks on one image): their run
config, flags, pmapped train and eval steps, and the trainer's epoch body (`train.run`)."""
