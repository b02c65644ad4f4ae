<?php
/**
 * A simulated archiving server's main process. Started (usually inside its own host and pid
 * namespace) with the extension loaded; reads one JSON command per line on stdin and answers
 * one JSON line on stdout. It claims through the extension like a Matomo archiver, and can
 * start more processes on its "server": extension claimers, and stock-Matomo claimers that
 * issue Matomo's own statement through PDO without the extension.
 *
 * Usage: php -d extension=... server-agent.php CONFIG_JSON
 */

declare(strict_types=1);

use Matomo\ArchiveClaim as AC;

$config = json_decode($argv[1], true);
AC\configure($config);
$children = [];

/**
 * A PHP process on this server that claims $ids and then holds them until killed.
 * $options: 'pid' => the pid it must get (through ns_last_pid: the server's pid namespace is
 * ours alone), 'argv' => words on its command line (say, a Matomo archiving child's),
 * 'register' => register_process() first (a child that works for another process registers).
 */
function spawn_claimer(array $config, array $ids, bool $withExtension, array $options = []): array
{
    $code = $withExtension
        ? 'Matomo\ArchiveClaim\configure(' . var_export($config, true) . ');'
           . (!empty($options['register']) ? ' Matomo\ArchiveClaim\register_process();' : '') . '
           $won = array_values(array_filter(' . var_export($ids, true) . ', fn ($id) => Matomo\ArchiveClaim\claim_invalidation($id)));'
        : '$c = ' . var_export($config, true) . ';
           $pdo = new PDO("mysql:host={$c["host"]};port={$c["port"]};dbname={$c["dbname"]}", $c["username"], $c["password"],
               [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => true]);
           $pdo->exec("SET sql_mode = \'NO_AUTO_VALUE_ON_ZERO\'");
           $st = $pdo->prepare("UPDATE `{$c["tables_prefix"]}archive_invalidations` SET status = ?, processing_host = ?,
               process_id = ?, ts_started = NOW() WHERE idinvalidation = ? AND status = ?");
           $won = [];
           foreach (' . var_export($ids, true) . ' as $id) {
               $st->execute([1, gethostname() ?: null, (string) getmypid(), $id, 0]);
               if ($st->rowCount() > 0) { $won[] = $id; }
           }';
    $code .= ' echo json_encode(["pid" => getmypid(), "won" => $won]), "\n"; fgets(STDIN);';
    $cmd = $withExtension ? array_merge([PHP_BINARY], inherited_ini(), ['-r', $code]) : [PHP_BINARY, '-r', $code];
    if (!empty($options['argv'])) {
        $cmd = array_merge($cmd, ['--'], $options['argv']);
    }
    if (isset($options['pid'])) {
        file_put_contents('/proc/sys/kernel/ns_last_pid', (string) ((int) $options['pid'] - 1));
    }
    $proc = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w']], $pipes);
    $answer = json_decode((string) fgets($pipes[1]), true);
    return [$proc, $pipes, $answer];
}

/** The -d settings this process runs with, so its children load the same extension the same way. */
function inherited_ini(): array
{
    $args = ['-d', 'extension=' . getenv('MATOMO_ARCHIVE_CLAIM_EXT')];
    foreach (['heartbeat_interval', 'lease', 'auto_reap', 'host_name_shared'] as $key) {
        $args[] = '-d';
        $args[] = "matomo_archive_claim.$key=" . ini_get("matomo_archive_claim.$key");
    }
    return $args;
}

function answer(array $data): void
{
    echo json_encode($data), "\n";
}

while (($line = fgets(STDIN)) !== false) {
    $msg = json_decode($line, true);
    try {
        switch ($msg['cmd']) {
            case 'identity':
                answer(AC\identity());
                break;
            case 'claim':
                answer(['won' => array_values(array_filter($msg['ids'], fn ($id) => AC\claim_invalidation($id)))]);
                break;
            case 'claim_all':
                // Every id tried, whatever the others did: what each claim answered or threw.
                $won = $errors = [];
                foreach ($msg['ids'] as $id) {
                    try {
                        if (AC\claim_invalidation($id)) {
                            $won[] = $id;
                        }
                    } catch (\Throwable $e) {
                        $errors[$id] = get_class($e) . ' (' . $e->getCode() . '): ' . $e->getMessage();
                    }
                }
                answer(['won' => $won, 'errors' => (object) $errors]);
                break;
            case 'complete':
                answer(['changed' => AC\complete_invalidations($msg['ids'])]);
                break;
            case 'release':
                answer(['changed' => AC\release_invalidations($msg['ids'])]);
                break;
            case 'reap':
                answer(AC\reap_orphans($msg['options'] ?? []));
                break;
            case 'in_progress':
                answer(['rows' => AC\in_progress($msg['filters'] ?? [])]);
                break;
            case 'background_releases':
                answer(['rows' => AC\background_releases()]);
                break;
            case 'register':
                answer(AC\register_process());
                break;
            case 'reap_with_clock_stepped':
                // A reap by another process of this server whose /proc/stat boot time is moved
                // by 'seconds', as `date -s` or a VM resume moves it: its own mount namespace
                // sees a copy of /proc/stat with btime changed.
                $tmp = (string) tempnam(sys_get_temp_dir(), 'stat');
                file_put_contents($tmp, preg_replace_callback('/^btime (\d+)$/m',
                    fn ($m) => 'btime ' . ((int) $m[1] + (int) $msg['seconds']), (string) file_get_contents('/proc/stat')));
                $cmd = array_merge(['unshare', '--mount', 'sh', '-c', 'mount --bind "$0" /proc/stat && exec "$@"', $tmp, PHP_BINARY],
                    inherited_ini(), ['-r', 'Matomo\ArchiveClaim\configure(json_decode($argv[1], true));
                        preg_match("/^btime (\\d+)$/m", file_get_contents("/proc/stat"), $m);
                        echo json_encode(["btime" => (int) $m[1], "report" => Matomo\ArchiveClaim\reap_orphans()]);', json_encode($config)]);
                $out = shell_exec(implode(' ', array_map('escapeshellarg', $cmd)));
                @unlink($tmp);
                answer(json_decode((string) $out, true) ?? ['error' => "stepped reap printed: $out"]);
                break;
            case 'spawn':
                [$proc, $pipes, $result] = spawn_claimer($config, $msg['ids'], $msg['extension'] ?? true, $msg);
                $children[$result['pid']] = [$proc, $pipes];
                answer($result);
                break;
            case 'run':
                // Another process of this server running a PHP script with the extension.
                $cmd = array_merge([PHP_BINARY], inherited_ini(), [$msg['script']], $msg['args'] ?? []);
                $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'a'], 2 => ['file', $msg['stderr'] ?? '/dev/null', 'a']], $pipes);
                $pid = proc_get_status($proc)['pid'];
                $children[$pid] = [$proc, []];
                answer(['pid' => $pid]);
                break;
            case 'kill':
                posix_kill((int) $msg['pid'], SIGKILL);
                // Its last act came before this instant (SIGKILL lets it run no more of its
                // code); the answer may reach the test much later on a loaded machine.
                $at = microtime(true);
                if (isset($children[$msg['pid']])) {
                    proc_close($children[$msg['pid']][0]);
                    unset($children[$msg['pid']]);
                }
                answer(['killed' => $msg['pid'], 'at' => $at]);
                break;
            case 'exit':
                answer(['bye' => true]);
                exit(0);
            default:
                answer(['error' => 'unknown command ' . $msg['cmd']]);
        }
    } catch (\Throwable $e) {
        answer(['error' => get_class($e) . ': ' . $e->getMessage()]);
    }
}
