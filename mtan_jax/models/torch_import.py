def load_torch_state_dict(*a, **k): raise NotImplementedError
