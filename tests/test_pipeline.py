"""The input pipeline over a small synthetic TFDS dataset built once for the module."""

import chex
import numpy as np
import pytest

from mtan_jax import losses
from mtan_jax import metrics
from mtan_jax import tasks as tasks_lib
from mtan_jax.data import pipeline

NYU = tasks_lib.dataset_tasks("nyuv2")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return pipeline.DataConfig(tfds_dir=str(tmp_path_factory.mktemp("tfds")), resolution=(64, 96),
                             synthetic_size=(11, 5), validation_fraction=0.2)


@pytest.fixture(scope="module")
def train(config):
  return pipeline.open_split(config, "train", NYU)


def test_splits_partition_the_release_train_split(config):
  train = pipeline.open_split(config, "train", NYU)
  validation = pipeline.open_split(config, "validation", NYU)
  test = pipeline.open_split(config, "test", NYU)
  assert (len(train), len(validation), len(test)) == (9, 2, 5)
  assert set(train.positions).isdisjoint(validation.positions)
  assert sorted(set(train.positions) | set(validation.positions)) == list(range(11))
  example = test[0]
  chex.assert_shape([example["image"], example["segmentation"], example["depth"],
                     example["normal"]], [(64, 96, 3), (64, 96), (64, 96, 1), (64, 96, 3)])
  chex.assert_type([example["image"], example["segmentation"]], [np.float32, np.int32])
  depth_only = pipeline.open_split(config, "test", tasks_lib.dataset_tasks("nyuv2", ("depth",)))
  assert set(depth_only[0]) == {"image", "depth"}


def test_cityscapes_synthetic_split_takes_the_chosen_label_set(tmp_path):
  config = pipeline.DataConfig(dataset="cityscapes", tfds_dir=str(tmp_path), resolution=(32, 64),
                               synthetic_size=(2, 1), num_classes=19)
  example = pipeline.open_split(config, "test", tasks_lib.dataset_tasks("cityscapes",
                                                                         num_classes=19))[0]
  assert example["segmentation"].max() > 6  # 19-class ids, not the 7 categories
  with pytest.raises(ValueError,
                     match=r"num_classes for cityscapes: expected one of \(7, 19\), found 5"):
    pipeline.open_split(pipeline.DataConfig(dataset="cityscapes", tfds_dir=str(tmp_path),
                                            resolution=(32, 64), synthetic_size=(2, 1),
                                            num_classes=5), "test", NYU[:1])


def collect(loader, epoch, **kwargs):
  return list(loader.epoch(epoch, **kwargs))


def test_training_batches_are_device_shaped_shuffled_and_complete(train):
  loader = pipeline.Loader(train, global_batch_size=4, local_devices=2, shuffle=True, seed=3,
                           drop_remainder=True, workers=0)
  batches = collect(loader, 0)
  assert len(batches) == len(loader) == 2  # 9 examples, batches of 4, remainder dropped
  chex.assert_shape(batches[0]["image"], (2, 2, 64, 96, 3))
  chex.assert_shape(batches[0]["segmentation"], (2, 2, 64, 96))
  assert "mask" not in batches[0]
  # The epoch's examples are distinct and in the epoch's order.
  order = loader.order(0)
  images = np.concatenate([b["image"].reshape(-1, 64, 96, 3) for b in batches])
  for k, image in enumerate(images):
    np.testing.assert_array_equal(image, train[int(order[k])]["image"])
  assert not np.array_equal(loader.order(0), loader.order(1))
  same_seed = pipeline.Loader(train, global_batch_size=4, shuffle=True, seed=3, workers=0)
  np.testing.assert_array_equal(same_seed.order(5), loader.order(5))


def test_evaluation_pads_the_last_batch_with_examples_that_count_for_nothing(train):
  loader = pipeline.Loader(train, global_batch_size=4, local_devices=2, workers=0)
  batches = collect(loader, 0)
  assert len(batches) == 3 and "mask" not in batches[0]  # 4 + 4 + 1 real examples
  images = np.concatenate([b["image"].reshape(-1, 64, 96, 3) for b in batches])
  np.testing.assert_array_equal(images[:len(train)],
                                np.stack([train[i]["image"] for i in range(len(train))]))
  padding = {k: v.reshape(4, *v.shape[2:])[1:] for k, v in batches[-1].items()}
  assert np.all(padding["segmentation"] == -1) and not np.any(padding["depth"])
  assert not np.any(padding["normal"])
  # The invariant the evaluation step relies on: the padded batch's loss and metric sums are
  # those of its one real example, whatever the model predicts for the padding.
  tasks = tasks_lib.dataset_tasks("nyuv2")
  last = {k: v.reshape(4, *v.shape[2:]) for k, v in batches[-1].items()}
  rng = np.random.default_rng(0)
  outputs = {"segmentation": np.log(rng.dirichlet(np.ones(13), (4, 64, 96))).astype(np.float32),
             "depth": rng.uniform(0, 5, (4, 64, 96, 1)).astype(np.float32),
             "normal": rng.normal(size=(4, 64, 96, 3)).astype(np.float32)}
  real = lambda tree: {k: v[:1] for k, v in tree.items()}  # noqa: E731
  chex.assert_trees_all_close(metrics.batch_sums(tasks, outputs, last),
                              metrics.batch_sums(tasks, real(outputs), real(last)), rtol=1e-6)
  for task in tasks:
    chex.assert_trees_all_close(
        losses.task_loss_sums(task, outputs[task.name], last[task.name]),
        losses.task_loss_sums(task, outputs[task.name][:1], last[task.name][:1]), rtol=1e-6)


def test_processes_read_their_own_share_of_each_global_batch(train):
  kwargs = dict(global_batch_size=4, shuffle=True, seed=1, augment=True, drop_remainder=True,
                workers=0)
  whole = collect(pipeline.Loader(train, local_devices=2, **kwargs), 2)
  shares = [collect(pipeline.Loader(train, local_devices=1, process_index=p, process_count=2,
                                    **kwargs), 2) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([shares[0][step][key], shares[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])


def test_a_process_whose_last_share_is_all_padding_gets_a_padding_batch(train):
  """9 examples, global batches of 4 over two processes: process 1's share of the last batch
  (positions 10, 11) is past the split's end, and is padding shaped like the others."""
  shares = [collect(pipeline.Loader(train, global_batch_size=4, process_index=p, process_count=2,
                                    workers=0), 0) for p in range(2)]
  assert [len(s) for s in shares] == [3, 3]
  last = shares[1][-1]
  chex.assert_shape(last["image"], (1, 2, 64, 96, 3))
  assert np.all(last["segmentation"] == -1) and not np.any(last["image"])
  assert not np.any(last["depth"]) and not np.any(last["normal"])


def test_a_kept_remainder_is_cut_to_a_multiple_of_every_processs_devices(train):
  """Training without drop_last: 9 examples in batches of 4 over two processes of one device
  each: 4 + 4, and the remainder (1) is fewer than the 2 devices, so no third batch; batches of 6
  on one process of two devices: 6, then the remainder 3 cut to 2; on one device nothing is cut."""
  def shares(batch):
    return [collect(pipeline.Loader(train, global_batch_size=batch, shuffle=True, seed=2,
                                    keep_remainder=True, process_index=p, process_count=2,
                                    workers=0), 0) for p in range(2)]
  assert [len(s) for s in shares(4)] == [2, 2]
  three = pipeline.Loader(train, global_batch_size=6, keep_remainder=True, local_devices=2,
                          workers=0)
  assert len(three) == 2 and three.batch_size(1) == 2
  chex.assert_shape(collect(three, 0)[1]["image"], (2, 1, 64, 96, 3))
  single = collect(pipeline.Loader(train, global_batch_size=4, shuffle=True, seed=2,
                                   keep_remainder=True, workers=0), 0)
  assert [b["image"].shape[1] for b in single] == [4, 4, 1]  # one device: nothing cut


def test_background_workers_give_the_same_batches(train):
  kwargs = dict(global_batch_size=2, shuffle=True, seed=4, augment=True, drop_remainder=True)
  serial = collect(pipeline.Loader(train, workers=0, **kwargs), 1)
  with pipeline.Loader(train, workers=3, prefetch=2, **kwargs) as loader:
    threaded = collect(loader, 1)
    again = collect(loader, 1)
  chex.assert_trees_all_equal(serial, threaded, again)


def test_resuming_mid_epoch_continues_the_same_order(train):
  loader = pipeline.Loader(train, global_batch_size=2, shuffle=True, seed=5, augment=True,
                           drop_remainder=True, workers=0)
  chex.assert_trees_all_equal(collect(loader, 3)[2:], collect(loader, 3, start_step=2))


def test_bad_loader_settings_are_refused(train):
  with pytest.raises(ValueError, match="multiple of the 4 devices"):
    pipeline.Loader(train, global_batch_size=6, local_devices=2, process_count=2)
  with pytest.raises(ValueError, match="smaller than one global batch"):
    pipeline.Loader(train, global_batch_size=16, drop_remainder=True)
  with pytest.raises(ValueError, match="split"):
    pipeline.open_split(pipeline.DataConfig(), "val", NYU)


def test_synthetic_configs_are_checked():
  from mtan_jax.data import builders
  with pytest.raises(ValueError, match="divisible by 32"):
    builders.synthetic_config(height=50)
  with pytest.raises(ValueError, match="'indoor' or 'street'"):
    builders.synthetic_config(variant="forest")
  assert builders.synthetic_config("street", 64, 128, 5, 2, 3).name == "street_64x128_5_2_seed3"


def test_freed_buffers_are_kept_on_glibc():
  import platform
  from mtan_jax.data import memory
  expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
  assert memory.keep_freed_memory() is expected


def test_a_bad_record_is_refused_naming_its_file_record_field_and_origin(train):
  """Values a release cannot hold, met while training, stop before they reach a batch."""
  clean = [train.source[int(k)] for k in train.positions[:3]]
  shards = [("/data/a.array_record", 2), ("/data/b.array_record", 1)]

  def source_with(position, field, value):
    records = [dict(r) for r in clean]
    bad = np.array(records[position][field], copy=True)
    bad.flat[7] = value
    records[position][field] = bad
    return pipeline.TaskSource(records, np.arange(3), NYU, "label", shards, 13,
                               "/data/nyuv2/train/*/{index}.npy")

  assert set(source_with(2, "depth", 1.5)[2]) == {"image", "segmentation", "depth", "normal"}
  index = int(clean[2]["index"])
  cases = [(2, "depth", np.nan, "record 0 of /data/b.array_record", "'depth': finite values "
            "expected, found 1 NaN or inf"),
           (1, "image", np.inf, "record 1 of /data/a.array_record", "'image': finite values"),
           (2, "label", 13, "record 0 of /data/b.array_record", "'segmentation': labels in "
            "[-1, 13) expected, found 13"),
           (0, "label", -2, "record 0 of /data/a.array_record", "found -2")]
  for position, field, value, where, problem in cases:
    with pytest.raises(pipeline.DataError) as error:
      source_with(position, field, value)[position]
    assert str(error.value).startswith(where), error.value
    assert problem in str(error.value)
  assert f"(built from /data/nyuv2/train/*/{index}.npy)" in str(
      pytest.raises(pipeline.DataError, source_with(2, "depth", np.nan).__getitem__, 2).value)
