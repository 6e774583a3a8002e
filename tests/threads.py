"""Running a test's work on several threads at once."""
import threading


def run_threads(work, n):
    """Call ``work(k)`` for k in range(n), each on its own thread, all at once; return
    {k: result}. The first exception a thread raised is raised here (in a thread it would
    otherwise be lost)."""
    results, errors = {}, []

    def run(k):
        try:
            results[k] = work(k)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
