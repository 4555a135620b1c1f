"""Evaluation plug-ins for the tests: what a job config can name instead of the world's (`module:attr`)."""

READS: list = []  # (concept, options) of every read
EVAL_SETS: dict = {}  # concept name -> its eval set; a concept not in it has none


def read_eval_set(filesystem, concept_dir, concept, options):
    READS.append((concept, options))
    return EVAL_SETS.get(concept.concept)


class CountingJudge:
    """Judges nothing, counts the pictures it was shown."""

    def feature_extractors(self):
        return {}

    def score(self, eval_set, images):
        return {"pictures_judged": float(len(images.generated) + len(images.parg) + len(images.edited))}


def counting_judge(image_size, log):
    log(f"counting judge for {image_size}-pixel pictures")
    return CountingJudge()
