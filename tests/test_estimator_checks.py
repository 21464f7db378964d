"""scikit-learn's own estimator checks, on the defaults, a paper preset and the whitening option."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_featmeta import MetaAugmentedHeadClassifier


@parametrize_with_checks(
    [
        MetaAugmentedHeadClassifier(random_state=0),
        MetaAugmentedHeadClassifier.from_preset("waterbirds", random_state=0),
        MetaAugmentedHeadClassifier(whitening_ridge=0.1, random_state=0),
    ]
)
def test_scikit_learn_compatible(estimator, check):
    check(estimator)
