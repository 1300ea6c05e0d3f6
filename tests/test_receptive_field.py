"""Receptive fields from gradients: PixelCNN's blind spot, and who has none."""

import pytest
import torch

from pixelexp.cli import main
from pixelexp.models import build_model
from pixelexp.tools.receptive import receptive_field

H = W = 15
I, J = 10, 7  # the pixel whose context we look at
LAYERS = 3


def field(name):
    torch.manual_seed(0)
    model = build_model(name, image_shape=(1, H, W), levels=2, hidden_dims=8,
                        recurrent_length=LAYERS, out_hidden_dims=8).double()
    return receptive_field(model, I, J)[0]  # (H, W) bool


@pytest.fixture(scope="module")
def fields():
    return {n: field(n) for n in ("pixel_cnn", "gated_pixel_cnn", "row_lstm", "diagonal_bilstm")}


def test_no_model_sees_the_future(fields):
    for name, f in fields.items():
        assert not f[I, J:].any() and not f[I + 1:].any(), name


def test_pixel_cnn_has_a_blind_spot_that_gated_pixel_cnn_and_the_diagonal_bilstm_see(fields):
    blind = (I - 1, J + 4)  # just above, four to the right: in the context, out of reach of 3x3 stacks
    assert not fields["pixel_cnn"][blind]
    assert fields["gated_pixel_cnn"][blind]
    assert fields["diagonal_bilstm"][blind]
    # PixelCNN does see the pixel right next to the spot: it is a blind spot, not a border.
    assert fields["pixel_cnn"][I - 1, J + 3]
    # The Row LSTM's context is a triangle (the paper's Figure 4): it misses the spot too.
    assert not fields["row_lstm"][blind]


def test_the_lstms_reach_all_rows_above_while_convolutions_stop(fields):
    far = (0, J)  # ten rows up: beyond 3 + LAYERS (+1) rows of convolutions
    assert not fields["pixel_cnn"][far] and not fields["gated_pixel_cnn"][far]
    assert fields["row_lstm"][far] and fields["diagonal_bilstm"][far]


def test_diagonal_bilstm_sees_nearly_the_whole_context(fields):
    f = fields["diagonal_bilstm"]
    assert f[:I - 1].all()  # every row but the previous is fully seen
    assert f[I, :J].all()  # and the whole row to the left


def test_receptive_field_command_writes_a_picture(tmp_path, capsys):
    out = tmp_path / "rf.png"
    assert main(["receptive-field", "gated_pixel_cnn", "--pixel", "5,4", "--size", "8,8",
                 "--out", str(out)]) == 0
    assert out.is_file() and "reach pixel (5, 4)" in capsys.readouterr().out
    assert main(["receptive-field", "pixel_gan"]) == 2
    assert main(["receptive-field", "pixel_cnn", "--pixel", "9,9", "--size", "8,8"]) == 2
