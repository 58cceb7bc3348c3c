"""bench maaf --authors-code: the loader of the authors' checkout and its shims, on a small stand-in checkout
written here in the layout of yahoo/maaf at 49a0df9 (their code is not part of this project)."""
import textwrap

import pytest
import torch

from visualsearch.bench import maaf_authors

MAIN = '''
import argparse, sys, torch
from models import img_text_composition_models
import tensorboardX  # not installed: main.py must not be imported

def parse_opt():
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', type=str, default='tirg')
    parser.add_argument('--embed_dim', type=int, default=8)
    parser.add_argument('--not_pretrained', action='store_true')
    parser.add_argument('--resolutionwise_pool', action='store_true')
    return parser.parse_args()

def create_model_and_optimizer(opt, texts):
    if opt.model == 'tirg':
        model = img_text_composition_models.TIRG(opt, texts)
    else:
        model = img_text_composition_models.Tokens(opt, texts)
    model = model.cuda()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)
'''
IMAGE_MODEL = '''
import torch
TOKENS = 14**2
'''
COMPOSITION = '''
import torch
from . import image_model
from pytorch_pretrained_bert import BertModel

class Tokens(torch.nn.Module):
    def __init__(self, opt, texts):
        super().__init__()
        self.tokens = image_model.TOKENS
        self.w = torch.nn.Parameter(torch.ones(1))

    def compute_loss(self, source, texts, target, soft_triplet_loss=True):
        return (self.w * (source - target).pow(2).mean()).cuda()
'''
TIRG = '''
import torch

class TIRG(torch.nn.Module):
    def __init__(self, opt, texts):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def compute_loss(self, source, texts, target, soft_triplet_loss=True):
        return ((self.w - 1) ** 2).sum().cuda()
'''
SCRIPT = '''# their run script
python main.py \\
    --dataset_path=/home/x/FashionIQ/ \\
    --model=sequence_concat_attention \\
    --embed_dim=8 \\
    --resolutionwise_pool \\
    --inspect
'''


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "maaf"
    for path, text in {"main.py": MAIN, "models/__init__.py": "", "models/image_model.py": IMAGE_MODEL,
                       "models/img_text_composition_models.py": COMPOSITION, "models/third_party/__init__.py": "",
                       "models/third_party/tirg.py": TIRG, "scripts/fashioniq.sh": SCRIPT}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    return root


def test_a_folder_that_is_not_their_checkout_is_named_with_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no main.py.*yahoo/maaf at commit 49a0df9"):
        maaf_authors.AuthorsModel(tmp_path, "tirg", 64, ["a"])


def test_their_script_options_keep_the_model_settings_and_drop_paths_and_logging(checkout):
    assert maaf_authors.script_options(checkout, "tirg") == ["--embed_dim=8", "--resolutionwise_pool",
                                                             "--model=tirg", "--not_pretrained"]


def test_their_model_is_built_with_the_token_grid_of_the_input_size_and_steps_on_cpu(checkout):
    model = maaf_authors.AuthorsModel(checkout, "sequence_concat_attention", 64, ["make it red"])
    assert model.model.tokens == 4 ** 2  # 14**2 tokens at 224 px, (64/16)**2 at 64 px
    assert model.opt.embed_dim == 8 and model.opt.not_pretrained and model.opt.resolutionwise_pool
    x = torch.ones(2, 3)
    before = float(model.model.w)
    model.step(x, ["a", "b"], torch.zeros(2, 3))
    assert float(model.model.w) < before  # one SGD step on their loss
    with pytest.raises((AssertionError, RuntimeError)):  # the .cuda() shim is gone once the step is done
        torch.ones(1).cuda()


def test_their_tirg_is_found_in_third_party_where_their_release_left_it(checkout):
    model = maaf_authors.AuthorsModel(checkout, "tirg", 224, ["a"])
    assert type(model.model).__name__ == "TIRG"
    assert model.step(torch.ones(1, 3), ["a"], torch.ones(1, 3)) == pytest.approx(1.0)
