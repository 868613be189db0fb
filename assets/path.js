// Which path a connection's media took: `relayed` when either end of the selected ICE
// candidate pair is a TURN relay candidate, `direct` otherwise, null while there is none.

export const PATH_WORDS = {
  direct: 'Direct connection',
  relayed: 'Relayed through the server',
};

export async function callPath(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === 'transport' && report.selectedCandidatePairId) {
      pair ??= stats.get(report.selectedCandidatePairId) ?? null;
    }
  });
  if (!pair) {
    // Browsers without transport stats: the nominated pair in use (Firefox marks it selected).
    stats.forEach((report) => {
      if (
        report.type === 'candidate-pair' &&
        report.state === 'succeeded' &&
        (report.selected || report.nominated)
      ) {
        pair ??= report;
      }
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  if (!local || !remote) return null;
  return local.candidateType === 'relay' || remote.candidateType === 'relay' ? 'relayed' : 'direct';
}

/**
 * Reads the path of each connection `connections()` gives, at once and then every few seconds,
 * and calls `show(path)` with the call's path: `relayed` if any connection is relayed, `direct`
 * if all are direct, null while none has a selected pair. Returns a stop function.
 */
export function watchPaths(connections, show) {
  let timer = null;
  let stopped = false;
  let delay = 250;
  const check = async () => {
    const paths = await Promise.all(
      connections().map((pc) =>
        callPath(pc).catch((error) => {
          console.warn('sigrelay: getStats failed:', error);
          return null;
        }),
      ),
    );
    if (stopped) return;
    const known = paths.filter(Boolean);
    const path = known.length === 0 ? null : known.includes('relayed') ? 'relayed' : 'direct';
    show(path);
    delay = path ? 3000 : Math.min(delay * 2, 2000);
    timer = setTimeout(check, delay);
  };
  check();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
