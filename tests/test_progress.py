"""Progress written to a file (nohup, SLURM, CI) is one readable line per piece of work, not a redrawn bar."""

import io

from mobilenet.progress import progress


def test_output_that_is_not_a_terminal_gets_one_line_with_the_count_and_the_total():
    stream = io.StringIO()
    assert list(progress(range(3), desc="Classifying", unit="batches", file=stream)) == [0, 1, 2]
    assert stream.getvalue().startswith("Classifying: 3/3 batches in ") and "\r" not in stream.getvalue()


def test_one_piece_of_work_is_counted_in_the_singular():
    stream = io.StringIO()
    list(progress(["only"], desc="Classifying", unit="batches", file=stream))
    assert stream.getvalue().startswith("Classifying: 1/1 batch in ")


def test_nothing_done_prints_nothing():
    stream = io.StringIO()
    list(progress([], desc="Decoding", unit="images", file=stream))
    assert stream.getvalue() == ""
