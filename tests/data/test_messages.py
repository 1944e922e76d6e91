"""The one-line reasons (data/messages.py): text flattened and cut, and an error's first
non-blank line, or its type when it says nothing."""
import pytest

from ffcv_imagenet.data.messages import error_line, one_line


@pytest.mark.parametrize('text, flat', [('a\tb\nc', 'a b c'), ('x' * 600, 'x' * 497 + '...')])
def test_one_line_flattens_and_cuts(text, flat):
    assert one_line(text) == flat


@pytest.mark.parametrize('error, line', [
    (RuntimeError('\n  \nfirst\tpart\nsecond'), 'first part'),
    (ValueError(''), 'ValueError'),
    (OSError('y' * 300), 'y' * 197 + '...')])
def test_an_errors_line_is_its_first_non_blank_line_or_its_type(error, line):
    assert error_line(error) == line
