<?php
/**
 * The crash-and-recover story on a throwaway database: three archiving servers share Matomo's
 * queue, server2 loses power mid-run, its invalidations are found by host, proven dead and
 * re-queued without anyone running a command, and the survivors finish the queue.
 *
 * Run it through scripts/demo (which builds the extension and starts the database).
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Demo;

use Matomo\ArchiveClaim\Tests\SimulatedServer;
use Matomo\ArchiveClaim\Tests\TestDatabase;
use Matomo\ArchiveClaim\Tests\WorkLog;

require __DIR__ . '/../../tests/support/TestDatabase.php';
require __DIR__ . '/../../tests/support/SimulatedServer.php';
require __DIR__ . '/../../tests/support/WorkLog.php';

const INVALIDATIONS = 300;
const ARCHIVERS_PER_SERVER = 2;
const WORK_MS = 100;
const HEARTBEAT_INTERVAL = 1;
const LEASE = 5;

function say(string $text = ''): void
{
    echo $text, "\n";
}

/** The operator's view: in-progress rows grouped by host, with pids, ages and verdicts. */
function show_in_progress(array $rows): void
{
    if (!$rows) {
        say('  (nothing in progress)');
        return;
    }
    $byHost = [];
    foreach ($rows as $r) {
        $byHost[$r['processing_host']][] = $r;
    }
    ksort($byHost);
    foreach ($byHost as $host => $hostRows) {
        say(sprintf('  %-10s %d in progress', $host, count($hostRows)));
        foreach (array_slice($hostRows, 0, 3) as $r) {
            say(sprintf('    #%-4d site %-2d %s  pid %-6s age %2ds  %-7s %s', $r['idinvalidation'], $r['idsite'],
                $r['date1'], $r['process_id'], $r['age_seconds'], $r['verdict'], $r['reason']));
        }
        if (count($hostRows) > 3) {
            say(sprintf('    ... and %d more', count($hostRows) - 3));
        }
    }
}

$isolated = SimulatedServer::canIsolate();
$config = TestDatabase::create('matomo_');
$pdo = TestDatabase::matomoPdo($config);
$log = tempnam(sys_get_temp_dir(), 'archive-claim-demo');
$servers = [];

try {
    say('Matomo archive_invalidations on a throwaway MariaDB: ' . INVALIDATIONS . ' invalidations queued.');
    TestDatabase::queueMany($pdo, 'matomo_', INVALIDATIONS);
    say($isolated
        ? 'Three archiving servers, each in its own host and pid namespace (unshare), '
            . ARCHIVERS_PER_SERVER . ' archivers each.'
        : 'Not root, so no separate host namespaces: three groups of processes on this one host play the servers '
            . '(recovery then comes from the local pid check rather than the heartbeat lease).');
    say(sprintf('Heartbeat every %d s, lease %d s (shortened for the demo; the defaults are 5 s and 60 s).',
        HEARTBEAT_INTERVAL, LEASE));
    say();

    $ini = ['heartbeat_interval' => HEARTBEAT_INTERVAL, 'lease' => LEASE, 'auto_reap' => 1];
    foreach (['server1', 'server2', 'server3'] as $name) {
        $servers[$name] = SimulatedServer::start($name, $config, $ini, $isolated);
        for ($i = 0; $i < ARCHIVERS_PER_SERVER; $i++) {
            $servers[$name]->send(['cmd' => 'run', 'script' => __DIR__ . '/../../tests/support/archiver.php',
                'args' => [json_encode($config), $log, (string) WORK_MS]]);
        }
    }
    $started = microtime(true);
    usleep(1500000);

    $doneBefore = INVALIDATIONS - (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn();
    $killedHost = $servers['server2']->host();
    say(sprintf('t=%.1fs  %d invalidations done. server2 loses power (every process on it killed at once).',
        microtime(true) - $started, $doneBefore));
    $servers['server2']->killWhole();
    $killedAt = microtime(true);
    unset($servers['server2']);

    $view = fn () => $servers['server1']->send(['cmd' => 'in_progress'])['rows'];
    say();
    say(sprintf('t=%.1fs  the operator view right after, from server1:', microtime(true) - $started));
    show_in_progress($view());

    // Nobody runs a command: the survivors' heartbeat threads reap on their own.
    $orphans = fn () => (int) $pdo->query("SELECT COUNT(*) FROM matomo_archive_invalidations WHERE status = 1 AND processing_host = "
        . $pdo->quote($killedHost))->fetchColumn();
    $deadline = microtime(true) + LEASE + 30;
    while ($orphans() > 0 && microtime(true) < $deadline) {
        usleep(50000);
    }
    $recovery = microtime(true) - $killedAt;
    say();
    say(sprintf('t=%.1fs  server2\'s invalidations are back in the queue, %.1f s after the power loss. The view now:',
        microtime(true) - $started, $recovery));
    show_in_progress($view());

    while ((int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn() > 0
        && microtime(true) < $deadline + 60) {
        usleep(100000);
    }
    $left = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn();
    $work = WorkLog::analyse($log, [$killedHost => $killedAt]);
    $finished = count($work['done']);
    $noOverlap = $work['overlaps'] === [] && $work['unfinished'] === [];

    say();
    say(sprintf('t=%.1fs  the survivors finished the queue.', microtime(true) - $started));
    say();
    say('Summary');
    say(sprintf('  invalidations done:                 %d of %d%s', $finished, INVALIDATIONS, $left ? " ($left left!)" : ''));
    say('  worked on by two live processes:    ' . ($noOverlap ? 'none' : implode('; ', array_merge($work['overlaps'], $work['unfinished']))));
    say(sprintf('  recovery after the power loss:      %.1f s (Matomo alone: up to 86,400 s, its archive_failure_recovery_timeout)', $recovery));
    $ok = $left === 0 && $finished === INVALIDATIONS && $noOverlap && $orphans() === 0;
    say($ok ? 'OK' : 'FAILED');
    exit($ok ? 0 : 1);
} finally {
    foreach ($servers as $s) {
        $s->stop();
    }
    TestDatabase::drop($config);
    @unlink($log);
}
