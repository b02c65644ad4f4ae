<?php
/**
 * System Check entries for the archiving fleet: whether the extension is loaded and configured
 * here, whether the index on status exists, invalidations held by dead processes, hosts whose
 * heartbeats went stale, and the clock offset between this server and the database. Each
 * says what to do in a sentence. Read-only, from Lib\Fleet (the source of the operator's page).
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Diagnostic;

use Piwik\Plugins\ArchiveClaim\Lib\Fleet;
use Piwik\Plugins\ArchiveClaim\Lib\History;
use Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility;
use Piwik\Plugins\ArchiveClaim\Lib\Schema;
use Piwik\Plugins\ArchiveClaim\Lib\StatusView;
use Piwik\Plugins\Diagnostics\Diagnostic\Diagnostic;
use Piwik\Plugins\Diagnostics\Diagnostic\DiagnosticResult;

class ArchiveClaimCheck implements Diagnostic
{
    /** Beyond this, the two clocks disagree enough to mislead whoever reads Matomo's times. */
    public const CLOCK_WARNING_SECONDS = 5.0;

    private const PAGE = 'Administration → System → Archiving fleet';

    public function execute()
    {
        if (!\Piwik\SettingsPiwik::isMatomoInstalled()) {
            return [];
        }
        $fleet = Fleet::forMatomo();
        $results = [$this->guard('Archive claims: Matomo\'s archive Model', fn () => $this->model())];
        $extension = $fleet->extension();
        $results[] = $this->extension($extension);
        $results[] = $this->guard('Archive claims: index on status', fn () => $this->index());
        $results[] = $this->guard('Archive claims: invalidations held by dead processes', fn () => $this->dead($extension['state'] === 'ok'));
        $results[] = $this->guard('Archive claims: long-running archives', fn () => $this->longRunning($extension['state'] === 'ok'));
        $results[] = $this->guard('Archive claims: archiving hosts\' heartbeats', fn () => $this->heartbeats($fleet));
        $results[] = $this->guard('Archive claims: clock offset to the database', fn () => $this->clock($fleet));
        return $results;
    }

    private function extension(array $extension): DiagnosticResult
    {
        $label = 'Archive claims: matomo_archive_claim extension';
        $message = htmlspecialchars($extension['message']);
        return match ($extension['state']) {
            'ok' => DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK, $message),
            // The web server's PHP may lack it while every archiver has it: a warning.
            'missing' => DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, $message
                . ' The archivers need it in the PHP that runs <code>core:archive</code>; without it here the checks below cannot judge whose invalidations are alive.'),
            default => DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_ERROR, $message
                . ' Check the [database] section of config.ini.php, or <code>matomo_archive_claim.database</code> in php.ini.'),
        };
    }

    /** Whether core:archive gets ClaimingModel here, or the plugin stepped aside (config/config.php). */
    private function model(): DiagnosticResult
    {
        $label = 'Archive claims: Matomo\'s archive Model';
        $problems = ModelCompatibility::problems();
        if (!$problems) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK,
                'Matomo\'s <code>' . ModelCompatibility::PARENT . '</code> is the one the plugin was written for: core:archive claims through the plugin.');
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, sprintf(
            'Matomo\'s <code>%s</code> changed in %s, so the ArchiveClaim plugin stepped aside: core:archive archives with Matomo\'s own Model and claims, '
            . 'and orphaned invalidations wait for archive_failure_recovery_timeout. Details: %s. Update the ArchiveClaim plugin to a version made for this Matomo.',
            ModelCompatibility::PARENT, htmlspecialchars(ModelCompatibility::names($problems)), htmlspecialchars(ModelCompatibility::describe($problems))));
    }

    private function index(): DiagnosticResult
    {
        $label = 'Archive claims: index on status';
        if (Schema::forMatomo()->statusIsIndexed()) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK, 'An index of archive_invalidations starts with status: heartbeat threads look for orphans at every beat.');
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING,
            'No index of archive_invalidations starts with status, so each look for orphans scans the whole table and the heartbeat threads look only once per lease. '
            . 'Add it: <code>php/bin/archive-claim --config=config/config.ini.php install-schema</code>, or deactivate and activate the ArchiveClaim plugin without <code>[ArchiveClaim] index = 0</code>.');
    }

    private function dead(bool $canJudge): DiagnosticResult
    {
        $label = 'Archive claims: invalidations held by dead processes';
        if (!$canJudge) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING,
                'Cannot judge here: the extension is not usable in this PHP (see above). Run <code>./console archiveclaim:status</code> on an archiving server.');
        }
        $rows = Fleet::rows();
        $dead = array_filter($rows, fn ($r) => $r['verdict'] === 'dead');
        if (!$dead) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK,
                sprintf('None of the %d invalidation(s) in progress is held by a dead process.', count($rows)));
        }
        $by = [];
        foreach ($dead as $r) {
            $by[] = ($r['processing_host'] ?? '?') . ' pid ' . ($r['process_id'] ?? '?');
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, sprintf(
            '%d invalidation(s) are held by dead processes (%s). The heartbeat threads of running archivers re-queue them within a lease, and the next <code>core:archive</code> at its start; '
            . 'if none runs, release them now with <code>./console archiveclaim:reap</code>. Details: %s.',
            count($dead), htmlspecialchars(implode(', ', array_unique($by))), self::PAGE));
    }

    private function longRunning(bool $canJudge): DiagnosticResult
    {
        $label = 'Archive claims: long-running archives';
        $t = History::threshold();
        if (!$canJudge) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING,
                'Cannot judge here: the extension is not usable in this PHP (see above).');
        }
        $long = array_filter(Fleet::rows(), fn ($r) => !empty($r['long_running']));
        if (!$long) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK, sprintf(
                'No invalidation in progress has run more than %s x as long as archives of its kind usually take (and over %d s).', $t['factor'], $t['min_seconds']));
        }
        $what = [];
        foreach ($long as $r) {
            $what[] = sprintf('#%d (site %d, %s %s, on %s pid %s, %s; usually %s)', $r['idinvalidation'], $r['idsite'], StatusView::period((int) $r['period']),
                $r['date1'], $r['processing_host'] ?? '?', $r['process_id'] ?? '?', StatusView::age((int) $r['age_seconds']), StatusView::age((int) ceil($r['usual_seconds'])));
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, sprintf(
            '%d invalidation(s) have run more than %s x as long as archives of their kind usually take: %s. Their archivers are alive; see what they archive '
            . '(<code>./console archiveclaim:status --long-running</code>, %s). The threshold: <code>[ArchiveClaim] long_running_factor</code> and <code>long_running_min_seconds</code> in config.ini.php.',
            count($long), $t['factor'], htmlspecialchars(implode(', ', array_slice($what, 0, 10))), self::PAGE));
    }

    private function heartbeats(Fleet $fleet): DiagnosticResult
    {
        $label = 'Archive claims: archiving hosts\' heartbeats';
        $processes = $fleet->processes();
        if ($processes === null) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING,
                'The process registry (archive_claim_process) does not exist: activate the ArchiveClaim plugin again (<code>./console plugin:activate ArchiveClaim</code>).');
        }
        $lease = Fleet::lease();
        $stale = Fleet::staleHosts($processes, $lease);
        if (!$stale) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK, sprintf(
                '%d registered process(es) on %d host(s), every host with a heartbeat within the %d s lease.',
                count($processes), count(array_unique(array_column($processes, 'host'))), $lease));
        }
        $hosts = [];
        foreach ($stale as $host => $age) {
            $hosts[] = sprintf('%s (last heartbeat %d s ago)', $host, (int) $age);
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, sprintf(
            'No fresh heartbeat from %s. If the host is gone, its invalidations go back to the queue on their own (or now: <code>./console archiveclaim:reap --processing-host=HOST --force</code>); '
            . 'if it still archives, it cannot reach the database: check its connection and its php.ini (<code>php --ri matomo_archive_claim</code> shows the last error).',
            htmlspecialchars(implode(', ', $hosts))));
    }

    private function clock(Fleet $fleet): DiagnosticResult
    {
        $label = 'Archive claims: clock offset to the database';
        $offset = $fleet->clock()['offset'];
        $text = sprintf('The database clock is %.1f s %s this server\'s.', abs($offset), $offset >= 0 ? 'ahead of' : 'behind');
        if (abs($offset) <= self::CLOCK_WARNING_SECONDS) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_OK, $text);
        }
        return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_WARNING, $text
            . ' Liveness verdicts use the database clock only, so no claim is at risk, but times Matomo writes from PHP and from the database disagree: synchronise both with NTP (chrony or systemd-timesyncd).');
    }

    /** A check that cannot run says so as an error entry instead of breaking the whole System Check. */
    private function guard(string $label, \Closure $check): DiagnosticResult
    {
        try {
            return $check();
        } catch (\Throwable $e) {
            return DiagnosticResult::singleResult($label, DiagnosticResult::STATUS_ERROR,
                'The check failed: ' . htmlspecialchars($e->getMessage()));
        }
    }
}
