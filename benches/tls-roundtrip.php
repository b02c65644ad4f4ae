<?php
/**
 * What TLS costs a round trip: the extension (OpenSSL behind its relay thread) and PDO
 * (OpenSSL inside mysqlnd), each over TLS on TCP and over the Unix socket of the same server.
 * Prints medians; asserts nothing.
 *
 *   MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS=1 tests/support/with-mariadb.sh \
 *     php -d extension=target/release/libmatomo_archive_claim.so -d matomo_archive_claim.auto_reap=0 benches/tls-roundtrip.php
 */
declare(strict_types=1);

$dsn = parse_url((string) getenv('MATOMO_ARCHIVE_CLAIM_TEST_DSN'));
$socket = (string) getenv('MATOMO_ARCHIVE_CLAIM_TEST_SOCKET');
$ca = getenv('MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR') . '/ca.pem';
$user = rawurldecode($dsn['user']);
$password = rawurldecode($dsn['pass']);
$root = new PDO("mysql:unix_socket=$socket", 'root', '', [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$root->exec('CREATE DATABASE IF NOT EXISTS mac_bench');
require __DIR__ . '/../tests/support/TestDatabase.php';
$root->exec('USE mac_bench');
$root->exec(sprintf(Matomo\ArchiveClaim\Tests\TestDatabase::INVALIDATIONS_DDL, 'matomo_'));

$base = ['username' => $user, 'password' => $password, 'dbname' => 'mac_bench', 'tables_prefix' => 'matomo_'];
$paths = [
    'extension, TLS over TCP' => ['host' => '127.0.0.1', 'port' => (string) $dsn['port'], 'enable_ssl' => '1', 'ssl_ca' => $ca] + $base,
    'extension, Unix socket' => ['host' => 'localhost', 'unix_socket' => $socket] + $base,
];
$pdos = [
    'PDO, TLS over TCP' => new PDO("mysql:host=127.0.0.1;port={$dsn['port']};dbname=mac_bench", $user, $password, [PDO::MYSQL_ATTR_SSL_CA => $ca]),
    'PDO, Unix socket' => new PDO("mysql:unix_socket=$socket;dbname=mac_bench", $user, $password),
];
$n = 2000;
$times = [];
$questions = fn (): int => (int) $root->query("SHOW GLOBAL STATUS LIKE 'Questions'")->fetch(PDO::FETCH_NUM)[1];
$perCall = [];
foreach ($paths as $name => $db) {
    Matomo\ArchiveClaim\configure($db);
    Matomo\ArchiveClaim\in_progress();
    $before = $questions();
    for ($i = 0; $i < $n; $i++) {
        $t = hrtime(true);
        Matomo\ArchiveClaim\in_progress();
        $times[$name . ': in_progress() on an empty table'][] = hrtime(true) - $t;
    }
    // Statements the server ran per call (less the one SHOW STATUS of ours).
    $perCall[$name] = ($questions() - $before - 1) / $n;
}
foreach ($pdos as $name => $pdo) {
    $stmt = $pdo->prepare('SELECT idinvalidation, idsite FROM matomo_archive_invalidations WHERE status = 1');
    for ($i = 0; $i < $n; $i++) {
        $t = hrtime(true);
        $stmt->execute();
        $stmt->fetchAll();
        $times[$name . ': the same kind of SELECT'][] = hrtime(true) - $t;
    }
}
printf("load average %s; %d calls each\n", implode(' ', array_map(fn ($l) => sprintf('%.1f', $l), sys_getloadavg())), $n);
foreach ($times as $name => $t) {
    sort($t);
    printf("  %-62s median %4d us, p90 %4d us\n", $name, $t[intdiv(count($t), 2)] / 1000, $t[intdiv(count($t) * 9, 10)] / 1000);
}
foreach ($perCall as $name => $q) {
    printf("  %s: %.1f statements per in_progress() call\n", $name, $q);
}
$root->exec('DROP DATABASE mac_bench');
