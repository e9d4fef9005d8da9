"""rerelrp.datasets: the IDX files of MNIST and Fashion-MNIST found under a data root and read offline."""
import pytest
import torch

from rerelrp.datasets import load_mnist, prepare_idx
from conftest import shared_data_root


def test_missing_files_are_named_with_the_folder_they_belong_in(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"FashionMNIST not found: put train-images-idx3-ubyte.gz, .* in "
                                                rf"{tmp_path}/fashion-mnist/"):
        load_mnist(tmp_path, "fashion-mnist")
    with pytest.raises(ValueError, match=r"dataset must be one of \['fashion-mnist', 'mnist'\], got 'kmnist'"):
        prepare_idx("kmnist", tmp_path, tmp_path / "out")


def test_fashion_mnist_loads_offline_with_ten_balanced_classes():
    x_tr, y_tr, x_te, y_te = load_mnist(shared_data_root(), "fashion-mnist")
    assert x_tr.shape == (60000, 1, 28, 28) and x_te.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0
    assert torch.equal(torch.bincount(y_tr), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(y_te), torch.full((10,), 1000))
    mnist = load_mnist(shared_data_root())[0]
    assert not torch.equal(x_tr[:100], mnist[:100])  # another data set, not MNIST's files found again
