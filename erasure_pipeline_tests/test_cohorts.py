import hashlib

import numpy as np
import pandas as pd

from erasure_pipeline.ml import cohorts as cm

QI, BANDS, MEASURES = ["region", "age"], {"age": 10}, ["value"]


def _subjects(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "subject_key": [f"{i:064x}" for i in rng.permutation(10**6)[:n]],
        "region": rng.choice(["uk", "eu", "us"], n),
        "age": rng.integers(20, 60, n),
        "value": rng.gamma(2, 50, n).round(2),
        "converted": rng.random(n) < 0.3,
    })


def _partial(df):
    return cm.compute_partial(df, QI, BANDS, MEASURES, "converted", clip=500)


def test_partials_merge_exactly_and_are_invertible():
    df = _subjects()
    whole = _partial(df)
    shards = [_partial(df.iloc[i::4]) for i in range(4)]
    pd.testing.assert_frame_equal(cm.merge_partials(shards), whole, check_dtype=False)
    # removing one subject changes exactly one shard's partial, and the merge equals a rebuild
    gone = df.index[7]
    shards[7 % 4] = _partial(df.iloc[7 % 4 :: 4].drop(index=gone))
    pd.testing.assert_frame_equal(cm.merge_partials(shards), _partial(df.drop(index=gone)), check_dtype=False)


def test_published_cells_are_k_anonymous_and_stable_while_membership_is():
    df = _subjects()
    merged = _partial(df)
    pub = cm.publish(merged, k_min=10, measures=MEASURES, clip=500, epsilon=1.0, noise_key=b"k")
    assert (merged.set_index("cell").loc[pub["cell"], "subjects"] >= 10).all()
    assert not cm.k_anonymity_violations(pub, merged, 10)
    again = cm.publish(merged, k_min=10, measures=MEASURES, clip=500, epsilon=1.0, noise_key=b"k")
    pd.testing.assert_frame_equal(pub, again)  # repeat publications cannot be averaged
    assert cm.k_anonymity_violations(pub, merged.assign(subjects=1), 10)


def test_differencing_two_publications_does_not_reveal_the_erased_subject():
    df = _subjects(n=2000, seed=1)
    before = cm.publish(_partial(df), k_min=10, measures=MEASURES, clip=500, epsilon=1.0, noise_key=b"secret")
    errors = []
    for pos in range(40):
        victim = df.iloc[pos * 13]
        after = cm.publish(_partial(df.drop(index=df.index[pos * 13])), k_min=10, measures=MEASURES, clip=500, epsilon=1.0, noise_key=b"secret")
        cell = f"region={victim.region}|age={victim.age // 10 * 10}"
        b, a = before.set_index("cell").loc[cell], after.set_index("cell").loc[cell]
        inferred = b["mean_value"] * b["subjects"] - a["mean_value"] * a["subjects"]
        errors.append(abs(inferred - min(victim.value, 500)))
    errors = np.array(errors)
    # an attacker's estimate is off by the difference of two Laplace(500) draws: rarely within 10
    assert (errors < 10).mean() < 0.2
    assert np.median(errors) > 100


def test_a_cells_member_digest_is_the_xor_of_its_members_hashes_as_one_integer_per_subject_gave_it():
    """The partial's member digests, XORed 64 bits at a time, are the digests one Python integer per subject gave
    (the published noise is keyed to them: a change would move every published number)."""
    rng = np.random.default_rng(3)
    keys = pd.Series([f"k{i:05d}" for i in rng.permutation(5000)])
    cells = pd.Series(rng.choice(["region=n|age=30", "region=s|age=30", "region=n|age=40", "solo"], size=5000, p=[.5, .3, .2 - 1e-4, 1e-4]))
    cells.iloc[17] = "solo"
    got = cm.member_digests(cells, keys)
    def member_hash(k: str) -> int:  # the digest's definition, one Python integer per subject as it was computed
        return int.from_bytes(hashlib.sha256(b"cohort-member:" + k.encode()).digest(), "big")

    expected = {c: cm._xor_hex([member_hash(k) for k in keys[cells == c]]) for c in sorted(set(cells))}
    assert got.to_dict() == expected and list(got.index) == sorted(expected)
    assert cm.member_digests(pd.Series([], dtype=object), pd.Series([], dtype=object)).empty
