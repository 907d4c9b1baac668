"""Fast graph-building helpers: a token of keys names exactly its keys."""

from __future__ import annotations

import operator

from cvplgraph.kernels import keys_token


def test_a_token_of_keys_differs_when_any_key_differs() -> None:
    keys = [(operator.getitem, ("fused-abc", i), 0, 1) for i in range(1000)]
    token = keys_token(keys)
    assert keys_token(list(keys)) == token  # the same keys, another list
    changed = [*keys[:500], (operator.getitem, ("fused-abc", 500), 0, 2), *keys[501:]]
    assert keys_token(changed) != token
    assert keys_token(keys[:-1]) != token
    assert keys_token([("a", 1)]) != keys_token([("a", "1")])  # an int and its text are other keys
    assert keys_token([(operator.getitem, "x")]) != keys_token([(operator.setitem, "x")])


def test_keys_with_local_functions_are_told_apart() -> None:
    """A local function does not pickle: such keys are named by their text (the function's address), so two
    functions alive at once give two tokens."""

    def make() -> object:
        def step() -> None:
            pass

        return step

    first, second = make(), make()
    assert keys_token([(first, ("a", 0))]) != keys_token([(second, ("a", 0))])
    assert keys_token([(first, ("a", 0))]) == keys_token([(first, ("a", 0))])
