"""Request collapsing bookkeeping (accel.cache.collapse), on a fake clock."""

from twisted.internet.task import Clock

from accel.cache.collapse import Collapser


def make(timeout: float = 5.0, pass_ttl: float = 60.0) -> tuple[Collapser, Clock]:
    clock = Clock()
    return Collapser(clock, timeout=timeout, pass_ttl=pass_ttl), clock


def test_first_miss_leads_and_second_does_not():
    """Only one request per key becomes the leader."""
    c, _ = make()
    assert c.lead("k")
    assert not c.lead("k")
    assert c.in_flight("k")


def test_waiters_are_woken_once_when_the_leader_is_done():
    """Every waiter is called exactly once, not timed out, when the fetch ends."""
    c, clock = make()
    c.lead("k")
    woken: list[bool] = []
    c.wait("k", woken.append)
    c.wait("k", woken.append)
    c.done("k", storable=True)
    clock.advance(10)
    assert woken == [False, False]
    assert not c.in_flight("k")


def test_waiter_times_out_and_is_not_woken_again():
    """A waiter past the lock timeout is released with timed_out=True, once."""
    c, clock = make(timeout=5)
    c.lead("k")
    woken: list[bool] = []
    c.wait("k", woken.append)
    clock.advance(5)
    assert woken == [True]
    c.done("k", storable=True)
    assert woken == [True]


def test_unstorable_response_leaves_a_hit_for_miss_marker_that_expires():
    """After an uncacheable answer, requests skip collapsing until the marker expires."""
    c, clock = make(pass_ttl=60)
    c.lead("k")
    c.done("k", storable=False)
    assert c.passing("k")
    clock.advance(59)
    assert c.passing("k")
    clock.advance(1)
    assert not c.passing("k")


def test_storable_response_clears_a_marker():
    """A later cacheable answer removes the hit-for-miss marker at once."""
    c, _ = make()
    c.lead("k")
    c.done("k", storable=False)
    c.lead("k")
    c.done("k", storable=True)
    assert not c.passing("k")


def test_a_marker_remembers_the_stamp_the_store_was_empty_at():
    """A live marker knows the store held nothing for its key at a noted stamp, and only that one."""
    c, _ = make(pass_ttl=60)
    c.lead("k")
    c.done("k", storable=False)
    assert not c.known_unstored("k", 7)
    c.note_unstored("k", 7)
    assert c.known_unstored("k", 7)
    assert not c.known_unstored("k", 8)
    assert not c.known_unstored("other", 7)


def test_the_stamp_of_an_empty_store_is_read_back_from_a_live_marker():
    """unstored_at: the noted stamp while the marker lives; None without a note or a marker."""
    c, clock = make(pass_ttl=60)
    assert c.unstored_at("k") is None
    c.lead("k")
    c.done("k", storable=False)
    assert c.unstored_at("k") is None
    c.note_unstored("k", 7)
    assert c.unstored_at("k") == 7
    clock.advance(60)
    assert c.unstored_at("k") is None


def test_nothing_is_noted_without_a_marker():
    """Without a live marker an empty store is not remembered: the notes never outgrow the markers."""
    c, clock = make(pass_ttl=60)
    c.note_unstored("k", 7)
    assert not c.known_unstored("k", 7)
    c.lead("k")
    c.done("k", storable=False)
    c.note_unstored("k", 7)
    clock.advance(60)
    assert not c.known_unstored("k", 7)


def test_a_new_marker_forgets_the_old_note():
    """A marker set again (after a fill) starts without a note; a cacheable answer drops it."""
    c, _ = make(pass_ttl=60)
    c.lead("k")
    c.done("k", storable=False)
    c.note_unstored("k", 7)
    c.lead("k")
    c.done("k", storable=False)
    assert not c.known_unstored("k", 7)
    c.note_unstored("k", 7)
    c.lead("k")
    c.done("k", storable=True)
    assert not c.known_unstored("k", 7)


def test_keys_are_independent():
    """Collapsing one key never holds another."""
    c, _ = make()
    assert c.lead("a")
    assert c.lead("b")


def test_markers_are_bounded_and_expired_ones_dropped():
    """Many distinct uncacheable URLs cannot grow the marker table without bound."""
    clock = Clock()
    c = Collapser(clock, pass_ttl=60, max_passes=3)
    for i in range(10):
        c.lead(f"k{i}")
        c.done(f"k{i}", storable=False)
    assert len(c._passes) == 3
    assert c.passing("k9") and not c.passing("k0")
    clock.advance(61)
    c.lead("new")
    c.done("new", storable=False)
    assert list(c._passes) == ["new"]


def test_published_fill_is_offered_to_followers_at_once():
    """A waiter that can follow takes the published handle and is never woken."""
    c, clock = make(timeout=5)
    c.lead("k")
    woken: list[bool] = []
    offered: list[object] = []
    c.wait("k", woken.append, lambda handle: offered.append(handle) or True)
    c.publish("k", "fill")
    assert offered == ["fill"]
    clock.advance(10)  # its lock timeout was cancelled
    c.done("k", storable=True)
    assert woken == []


def test_a_waiter_that_declines_keeps_waiting_for_the_end():
    """Declining the handle (or having no follow callback) waits for done()."""
    c, _ = make()
    c.lead("k")
    woken: list[bool] = []
    c.wait("k", woken.append, lambda handle: False)
    c.wait("k", woken.append)
    c.publish("k", "fill")
    assert woken == []
    c.done("k", storable=True)
    assert woken == [False, False]


def test_published_handle_is_there_until_done():
    """Later requests find the handle while the fill goes on, and not after."""
    c, _ = make()
    c.lead("k")
    assert c.published("k") is None
    c.publish("k", "fill")
    assert c.published("k") == "fill"
    c.done("k", storable=True)
    assert c.published("k") is None
